"""Bootstrap confidence intervals for the report's numbers, resampling test studies or queries.

Every headline statistic is a function of per-item values, one item per test study (zero-shot)
or per query (retrieval): a mean (accuracy, Recall@K, concept precision@K), a one-vs-rest ROC
AUC over the studies (zero-shot AUC), or a mean over concepts of the mean over the queries that
show the concept (concept AUC). A resample is a vector of counts (how often each item was
drawn), so a statistic is computed on all resamples at once with weighted sums, and each
resample gives exactly what the statistic gives on the resampled items listed out (the tests
check this against a direct computation).

Resamples depend only on (seed, number of items): two variants scored on the same items get
the same resamples, so the difference of their statistics, resample by resample, is a paired
bootstrap of the difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Interval = tuple[float, float]


@dataclass(frozen=True)
class Bootstrap:
    """How intervals are drawn: ``resamples`` percentile-bootstrap resamples at ``level``."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 1:
            raise ValueError(f"resamples must be at least 1, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level}")

    def indices(self, n: int) -> np.ndarray:
        """(resamples, n): the items drawn, with replacement, in each resample."""
        if n < 1:
            raise ValueError("cannot resample an empty set of items")
        return np.random.default_rng([self.seed, n]).integers(0, n, size=(self.resamples, n))

    def counts(self, n: int) -> np.ndarray:
        """(resamples, n): how often each item is drawn in each resample (float, for weighted sums)."""
        drawn = self.indices(n)
        counts = np.zeros(drawn.shape, dtype=float)
        np.add.at(counts, (np.arange(len(drawn))[:, None], drawn), 1.0)
        return counts

    def interval(self, values: np.ndarray) -> Interval | None:
        """The central ``level`` interval of the resampled statistic (undefined resamples,
        NaN, left out); ``None`` when no resample is defined."""
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            return None
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(values, [tail, 1.0 - tail])
        return float(low), float(high)


def mean_statistic(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,): the mean of per-item ``values`` (n,) on each resample of ``counts`` (B, n)."""
    values = np.asarray(values, dtype=float)
    return counts @ values / counts.shape[1]


def weighted_auc(positive: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,): ROC AUC of ``score`` separating the ``positive`` items from the others, on each
    resample (ties count one half, as in scikit-learn); NaN where a resample lacks either kind."""
    positive = np.asarray(positive, dtype=bool)
    levels, level_of = np.unique(np.asarray(score, dtype=float), return_inverse=True)
    one_hot = np.zeros((len(level_of), len(levels)))
    one_hot[np.arange(len(level_of)), level_of] = 1.0
    negatives_at = (counts * ~positive) @ one_hot            # (B, levels): negative weight per score level
    below = np.cumsum(negatives_at, axis=1) - negatives_at   # negative weight strictly below each level
    wins = below[:, level_of[positive]] + 0.5 * negatives_at[:, level_of[positive]]
    numerator = (counts[:, positive] * wins).sum(1)
    pairs = counts[:, positive].sum(1) * counts[:, ~positive].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, numerator / np.where(pairs > 0, pairs, 1.0), np.nan)


def macro_auc_statistic(targets: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,): mean one-vs-rest AUC over the classes it is defined for on each resample (as
    :func:`m3bind.eval.metrics.classification_metrics` computes ``auc_macro``)."""
    targets = np.asarray(targets)
    per_class = np.stack([weighted_auc(targets == c, scores[:, c], counts) for c in range(scores.shape[1])], axis=1)
    return _nanmean_rows(per_class)


def concept_mean_statistic(per_query: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B,): mean over concepts of the mean over the queries showing the concept, on each
    resample. ``per_query`` (Q, C) holds a query's value for a concept, NaN where the query
    does not show it (or the concept is undefined); concepts no resampled query shows are left
    out, as :func:`m3bind.eval.retrieval.concept_auc` leaves them out."""
    per_query = np.asarray(per_query, dtype=float)
    defined = np.isfinite(per_query)
    sums = counts @ np.where(defined, per_query, 0.0)   # (B, C)
    weights = counts @ defined.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_concept = np.where(weights > 0, sums / np.where(weights > 0, weights, 1.0), np.nan)
    return _nanmean_rows(per_concept)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means over the finite entries; NaN for a row with none."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(1)
    count = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
