"""Cross-modal retrieval between two image modalities in the shared space.

A query study of modality A ranks every gallery study of modality B by cosine similarity.
- Recall@K by patient: the gallery holds the query patient's own study (or studies); is one in
  the top K? Chance is K / gallery size when each patient has one study (:func:`recall_chance`).
- Concept precision@K (label-aware): synthetic patients with the same findings are
  interchangeable, so also score the share of the top K that share the query's cross-modal
  concept set (both "no concept" counts as a match: normal finds normal).
- Concept AUC: for every query that shows a concept c, the ROC AUC with which its similarities
  separate the gallery studies showing c from those that do not; averaged over the queries of
  each concept, then over concepts. Chance is 0.5 whatever the class balance, and, unlike the
  precision, a ranking that puts every normal study first cannot score well on it (normal
  studies dominate a gallery and attract every query when they sit near the centre).

Every metric is a mean of per-query values (:class:`QueryScores`), which is what the bootstrap
intervals (:mod:`m3bind.eval.bootstrap`) resample.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from m3bind.eval.bootstrap import Bootstrap, concept_mean_statistic, mean_statistic


def recall_hits(ranking: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str],
                ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per query, 1.0 if its own patient's gallery study is among the top K, else 0.0."""
    gallery_ids = np.asarray(gallery_ids)
    hits = gallery_ids[ranking] == np.asarray(query_ids)[:, None]  # (Q, G)
    first_hit = np.where(hits.any(1), hits.argmax(1), ranking.shape[1])
    return {k: (first_hit < k).astype(float) for k in ks}


def recall_chance(query_ids: Sequence[str], gallery_ids: Sequence[str], ks: Sequence[int]) -> dict[int, float]:
    """Recall@K of a random ranking, exactly: a query whose patient has n studies in a gallery of
    G finds one in a random top K with probability 1 - C(G - n, K) / C(G, K), which is K / G
    when every patient has one study (and 0 for a query whose patient has none)."""
    size = len(gallery_ids)
    studies_of = Counter(gallery_ids)
    queries_with = Counter(studies_of[q] for q in query_ids)  # n -> queries whose patient has n studies
    out = {}
    for k in ks:
        hit = {n: _random_hit(n, size, k) for n in queries_with}
        # one n for every query (the usual case): its value as it is, K / G exactly for n = 1
        out[k] = (next(iter(hit.values())) if len(hit) == 1 else
                  float(sum(hit[n] * count for n, count in queries_with.items()) / len(query_ids)) if hit else 0.0)
    return out


def _random_hit(n: int, size: int, k: int) -> float:
    """Probability that a random top K of ``size`` studies holds one of ``n`` given ones."""
    if n == 0:
        return 0.0
    if n == 1:
        return min(1.0, k / size)
    miss = 1.0  # all K picks avoid the n studies
    for i in range(min(k, size)):
        miss *= max(size - n - i, 0) / (size - i)
    return 1.0 - miss


def recall_at_k(ranking: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str],
                ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose own patient's gallery study is among the top K."""
    return {k: float(hits.mean()) for k, hits in recall_hits(ranking, query_ids, gallery_ids, ks).items()}


def concept_precision_per_query(ranking: np.ndarray, query_concepts: Sequence[frozenset],
                                gallery_concepts: Sequence[frozenset], ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Per query, the share of its top K whose concept set equals the query's."""
    codes = {c: i for i, c in enumerate(dict.fromkeys([*query_concepts, *gallery_concepts]))}
    query_code = np.array([codes[c] for c in query_concepts])
    gallery_code = np.array([codes[c] for c in gallery_concepts])
    return {k: (gallery_code[ranking[:, :k]] == query_code[:, None]).mean(1) for k in ks}


def concept_precision_at_k(ranking: np.ndarray, query_concepts: Sequence[frozenset],
                           gallery_concepts: Sequence[frozenset], ks: Sequence[int]) -> dict[int, float]:
    """Mean share of the top K whose concept set equals the query's."""
    return {k: float(v.mean()) for k, v in
            concept_precision_per_query(ranking, query_concepts, gallery_concepts, ks).items()}


def concept_chance(query_concepts: Sequence[frozenset], gallery_concepts: Sequence[frozenset]) -> float:
    """Expected concept precision of a random ranking."""
    gallery = list(gallery_concepts)
    return float(np.mean([sum(g == q for g in gallery) / len(gallery) for q in query_concepts]))


def concept_auc_per_query(sims: np.ndarray, query_concepts: Sequence[frozenset],
                          gallery_concepts: Sequence[frozenset]) -> tuple[list[str], np.ndarray]:
    """(concepts, (Q, C) matrix): each query's ROC AUC for each concept it shows, NaN elsewhere.

    Concepts without a query, or whose gallery studies all have (or all lack) them, are left out.
    """
    concepts, columns = [], []
    ranks = None
    for concept in sorted(frozenset().union(*query_concepts, *gallery_concepts)):
        positives = np.array([concept in g for g in gallery_concepts])
        queries = np.array([concept in q for q in query_concepts])
        if not queries.any() or positives.all() or not positives.any():
            continue
        if ranks is None:
            ranks = rankdata(sims, axis=1)  # average ranks: ties count one half, as in sklearn
        n_pos, n_neg = positives.sum(), (~positives).sum()
        column = np.full(len(query_concepts), np.nan)
        column[queries] = (ranks[queries][:, positives].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        concepts.append(concept)
        columns.append(column)
    matrix = np.stack(columns, axis=1) if columns else np.zeros((len(query_concepts), 0))
    return concepts, matrix


def concept_auc(sims: np.ndarray, query_concepts: Sequence[frozenset],
                gallery_concepts: Sequence[frozenset]) -> dict[str, float]:
    """Per concept: mean over its queries of the ROC AUC separating gallery studies with it."""
    concepts, matrix = concept_auc_per_query(sims, query_concepts, gallery_concepts)
    return {c: float(np.nanmean(matrix[:, i])) for i, c in enumerate(concepts)}


@dataclass(frozen=True)
class QueryScores:
    """Per-query retrieval values of one (query, gallery) pair; every reported number is a mean
    of these, so they are what the bootstrap resamples (and what head draws are averaged over)."""

    recall: dict[int, np.ndarray]             # K -> (Q,) own study in the top K
    precision: dict[int, np.ndarray]          # K -> (Q,) concept precision@K
    concepts: list[str]
    concept_auc: np.ndarray                   # (Q, C), NaN where the query does not show the concept
    gallery: int
    concept_chance: float
    # Queries whose patient has no study in the gallery: they can only miss in Recall@K.
    without_partner: int = 0
    # K -> Recall@K of a random ranking (:func:`recall_chance`); None: K / gallery size.
    recall_chance: dict[int, float] | None = None

    @property
    def queries(self) -> int:
        return len(self.concept_auc)

    def summary(self) -> dict:
        """The reported numbers (``retrieval_scores``' dict)."""
        per_concept = {c: float(np.nanmean(self.concept_auc[:, i])) for i, c in enumerate(self.concepts)}
        return {
            "recall": {k: float(v.mean()) for k, v in self.recall.items()},
            "recall_chance": self.recall_chance or {k: min(1.0, k / self.gallery) for k in self.recall},
            "concept_precision": {k: _defined(v.mean()) for k, v in self.precision.items()},
            "concept_chance": _defined(self.concept_chance),
            "concept_auc": float(np.mean(list(per_concept.values()))) if per_concept else None,
            "concept_auc_per_concept": per_concept,
            "queries": self.queries, "gallery": self.gallery, "queries_without_partner": self.without_partner,
        }

    def resampled(self, counts: np.ndarray) -> dict:
        """{metric: (B,) values on each resample of the queries}: ``concept_auc``, ``recall`` and
        ``concept_precision`` ({K: (B,)})."""
        return {"concept_auc": concept_mean_statistic(self.concept_auc, counts) if self.concepts
                else np.full(len(counts), np.nan),
                "recall": {k: mean_statistic(v, counts) for k, v in self.recall.items()},
                "concept_precision": {k: mean_statistic(v, counts) for k, v in self.precision.items()}}

    def intervals(self, bootstrap: Bootstrap) -> dict:
        """Bootstrap intervals over the queries: ``concept_auc_ci``, ``recall_ci`` and
        ``concept_precision_ci`` ({K: [low, high]})."""
        values = self.resampled(bootstrap.counts(self.queries))
        return {"concept_auc_ci": bootstrap.interval(values["concept_auc"]),
                "recall_ci": {k: bootstrap.interval(v) for k, v in values["recall"].items()},
                "concept_precision_ci": {k: bootstrap.interval(v) for k, v in values["concept_precision"].items()}}


def _defined(value: float) -> float | None:
    """A reported number, or None (shown as '–') where it is undefined (NaN)."""
    return None if np.isnan(value) else float(value)


def mean_query_scores(draws: Sequence[QueryScores]) -> QueryScores:
    """Per-query values averaged over draws of the same queries and gallery (random heads);
    every reported number of the result is the mean of the draws' numbers."""
    first = draws[0]
    return QueryScores(recall={k: np.mean([d.recall[k] for d in draws], 0) for k in first.recall},
                       precision={k: np.mean([d.precision[k] for d in draws], 0) for k in first.precision},
                       concepts=first.concepts, concept_auc=np.mean([d.concept_auc for d in draws], 0),
                       gallery=first.gallery, concept_chance=first.concept_chance,
                       without_partner=first.without_partner, recall_chance=first.recall_chance)


def query_scores(sims: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str],
                 query_concepts: Sequence[frozenset], gallery_concepts: Sequence[frozenset],
                 ks: Sequence[int] = (1, 5, 10)) -> QueryScores:
    """Per-query values from a (Q, G) similarity matrix.

    When no study on either side shows any concept (two modalities whose labels have nothing in
    common), every study "matches" every other: concept precision is then undefined (NaN, reported
    as None), not a perfect 1.0.
    """
    ranking = np.argsort(-sims, axis=1, kind="stable")
    concepts, auc = concept_auc_per_query(sims, query_concepts, gallery_concepts)
    if any(query_concepts) or any(gallery_concepts):
        precision = concept_precision_per_query(ranking, query_concepts, gallery_concepts, ks)
        chance = concept_chance(query_concepts, gallery_concepts)
    else:
        precision, chance = {k: np.full(len(query_ids), np.nan) for k in ks}, float("nan")
    in_gallery = set(gallery_ids)
    return QueryScores(recall=recall_hits(ranking, query_ids, gallery_ids, ks), precision=precision,
                       concepts=concepts, concept_auc=auc, gallery=len(gallery_ids), concept_chance=chance,
                       without_partner=sum(q not in in_gallery for q in query_ids),
                       recall_chance=recall_chance(query_ids, gallery_ids, ks))


def embedding_query_scores(query_emb: torch.Tensor, gallery_emb: torch.Tensor, query_ids: Sequence[str],
                           gallery_ids: Sequence[str], query_concepts: Sequence[frozenset],
                           gallery_concepts: Sequence[frozenset], ks: Sequence[int] = (1, 5, 10)) -> QueryScores:
    """:func:`query_scores` with cosine similarities of (normalised) embeddings."""
    sims = (query_emb.float() @ gallery_emb.float().T).cpu().numpy()
    return query_scores(sims, query_ids, gallery_ids, query_concepts, gallery_concepts, ks)


def retrieval_scores(query_emb: torch.Tensor, gallery_emb: torch.Tensor, query_ids: Sequence[str],
                     gallery_ids: Sequence[str], query_concepts: Sequence[frozenset],
                     gallery_concepts: Sequence[frozenset], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@K, concept precision@K (and its chance) and concept AUC of one pair."""
    return embedding_query_scores(query_emb, gallery_emb, query_ids, gallery_ids, query_concepts,
                                  gallery_concepts, ks).summary()
