"""Classification metrics for zero-shot and few-shot evaluation, and bootstrap confidence intervals.

Two settings, as in the papers M3Bind compares with:

- **single-label, multi-class** (FLAIR, CheXpert 5x200, the synthetic cohort): one class per study,
  a score matrix (N, C); the prediction is the arg-max class. :func:`classification_metrics`.
- **multi-label** (CT-RATE): each finding is its own yes/no decision from a probability.
  :func:`multilabel_metrics`.

Every number means what scikit-learn's function of the same name computes, so it means exactly
what the field's papers mean. They are computed here from counts (a confusion matrix, and the
ROC AUC in its rank form), because scikit-learn's input checks cost more than the metrics when
evaluation calls them thousands of times; tests/test_eval_metrics.py checks them equal.
Undefined values (an AUC for a class with no positive study) are ``None``, never NaN, so the
results go into ``report.json`` unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn.exceptions import UndefinedMetricWarning


def classification_metrics(y_true: Sequence[int] | np.ndarray, scores: np.ndarray,
                           classes: Sequence[str]) -> dict:
    """Single-label metrics from a score matrix.

    Args:
        y_true: (N,) class index of each study, in ``[0, C)``.
        scores: (N, C) a score per class (probabilities or logits); the prediction is the arg-max.
            The AUC of class c ranks the studies by column c (one-vs-rest).
        classes: the C class names, in column order.

    Returns a dict with
        ``n``, ``classes``;
        ``accuracy``;
        ``f1_macro`` and ``precision_macro`` (precision of a never-predicted class counts 0):
        both averaged over the classes that occur in ``y_true`` or in the predictions, as
        scikit-learn does by default, so a class absent from both neither helps nor hurts, and
        predicting a class that is absent from the data is penalised;
        ``aca``: average class accuracy, the mean recall over classes present in ``y_true``
        (= balanced accuracy);
        ``recall_per_class``: class -> recall, ``None`` for a class absent from ``y_true``;
        ``auc_macro``: mean one-vs-rest ROC AUC over the classes it is defined for,
        ``auc_per_class`` (``None`` where undefined) and ``auc_skipped``: classes left out
        because every study is, or none is, of that class;
        ``chance``: 1/C, the expected accuracy (and ACA) of guessing uniformly at random;
        ``majority_rate``: the accuracy of always answering the most frequent class.
    """
    classes = list(classes)
    y_true, scores = _check_single_label(y_true, scores, len(classes))
    y_pred = scores.argmax(axis=1)
    counts = _confusion(y_true, y_pred, len(classes))
    true_per_class, predicted_per_class, hits = counts.sum(1), counts.sum(0), np.diag(counts)
    present = true_per_class > 0
    recalls = _ratio(hits, true_per_class)
    precisions = _ratio(hits, predicted_per_class)
    # sklearn's default for macro averages: the classes that occur in the truth or the predictions.
    occurring = present | (predicted_per_class > 0)
    auc_per_class: dict[str, float | None] = {}
    for c, name in enumerate(classes):
        auc_per_class[name] = _binary_auc(y_true == c, scores[:, c])
    defined_aucs = [v for v in auc_per_class.values() if v is not None]
    return {
        "n": int(len(y_true)),
        "classes": classes,
        "accuracy": float(hits.sum() / len(y_true)),
        "f1_macro": float(_ratio(2 * hits, true_per_class + predicted_per_class)[occurring].mean()),
        "precision_macro": float(precisions[occurring].mean()),
        "aca": float(recalls[present].mean()),
        "recall_per_class": {name: (float(r) if p else None)
                             for name, r, p in zip(classes, recalls, present)},
        "auc_macro": float(np.mean(defined_aucs)) if defined_aucs else None,
        "auc_per_class": auc_per_class,
        "auc_skipped": [name for name, v in auc_per_class.items() if v is None],
        "chance": 1.0 / len(classes),
        "majority_rate": float(np.bincount(y_true, minlength=len(classes)).max() / len(y_true)),
    }


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float | Sequence[float] = 0.5,
                       classes: Sequence[str] | None = None) -> dict:
    """Multi-label metrics, one binary decision per finding (CT-RATE style).

    Args:
        y_true: (N, C) 0/1 matrix, 1 where the study has the finding.
        probs: (N, C) probability of each finding (e.g. :func:`m3bind.eval.prompts.presence_probabilities`).
        threshold: a finding is called present when its probability is ``>= threshold``;
            one number for all findings or one per finding.
        classes: the C finding names (default ``"0"``, ``"1"``, ...).

    Returns a dict with ``n``, ``classes``, ``auc_macro`` (mean over findings whose AUC is
    defined, i.e. with both positive and negative studies; ``None`` if none), ``auc_skipped``,
    ``f1_macro``, ``precision_macro`` (zero_division=0) and ``accuracy_macro`` (mean over all
    findings of the per-finding accuracy), and ``per_class``: finding -> {auc, f1, precision,
    recall, accuracy, n_positive}.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=float)
    if y_true.ndim != 2 or y_true.shape != probs.shape:
        raise ValueError(f"y_true and probs must both be (N, C); got {y_true.shape} and {probs.shape}")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    n_classes = y_true.shape[1]
    classes = [str(c) for c in range(n_classes)] if classes is None else list(classes)
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} columns")
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=float), (n_classes,))
    y_true = y_true.astype(int)
    y_pred = (probs >= thresholds[None, :]).astype(int)

    per_class = {}
    for c, name in enumerate(classes):
        truth, pred = y_true[:, c], y_pred[:, c]
        hits, positives, called = int((truth & pred).sum()), int(truth.sum()), int(pred.sum())
        per_class[name] = {
            "auc": _binary_auc(truth.astype(bool), probs[:, c]),
            "f1": float(_ratio(2 * hits, positives + called)),
            "precision": float(_ratio(hits, called)),
            "recall": float(_ratio(hits, positives)),
            "accuracy": float((truth == pred).mean()),
            "n_positive": positives,
        }
    aucs = [m["auc"] for m in per_class.values() if m["auc"] is not None]
    return {
        "n": int(y_true.shape[0]),
        "classes": classes,
        "auc_macro": float(np.mean(aucs)) if aucs else None,
        "auc_skipped": [name for name, m in per_class.items() if m["auc"] is None],
        "f1_macro": float(np.mean([m["f1"] for m in per_class.values()])),
        "precision_macro": float(np.mean([m["precision"] for m in per_class.values()])),
        "accuracy_macro": float(np.mean([m["accuracy"] for m in per_class.values()])),
        "per_class": per_class,
    }


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float | None], y_true: np.ndarray,
                 scores: np.ndarray, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(y_true, scores)``.

    Studies (rows) are resampled with replacement ``n`` times, as CT-CLIP's evaluation does. A
    resample on which the metric is undefined (``metric_fn`` returns ``None``/NaN or raises
    ``ValueError``, e.g. an AUC on a resample with one class only) is skipped rather than
    counted as 0, which would bias the interval down.

    Returns (low, high), the ``alpha/2`` and ``1 - alpha/2`` quantiles.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y_true = np.asarray(y_true)
    scores = np.asarray(scores)
    if len(y_true) != len(scores):
        raise ValueError(f"y_true has {len(y_true)} rows but scores has {len(scores)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        rows = rng.integers(0, len(y_true), size=len(y_true))
        try:
            with warnings.catch_warnings():
                # Undefined resamples are expected and skipped below; one warning each is noise.
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                value = metric_fn(y_true[rows], scores[rows])
        except ValueError:
            continue
        if value is not None and np.isfinite(value):
            values.append(float(value))
    if not values:
        raise ValueError("the metric is undefined on every bootstrap resample")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of one yes/no question; ``None`` when only one answer occurs (AUC undefined)."""
    if is_positive.all() or not is_positive.any():
        return None
    # The Mann-Whitney form of the ROC AUC (ties count one half): the same number as
    # sklearn.metrics.roc_auc_score, without its input validation, which cost more than the
    # metric itself when evaluation calls this thousands of times (tests/test_eval_metrics.py).
    ranks = rankdata(score)
    n_positive = int(is_positive.sum())
    n_negative = len(is_positive) - n_positive
    return float((ranks[is_positive].sum() - n_positive * (n_positive + 1) / 2.0) / (n_positive * n_negative))


def _check_single_label(y_true, scores, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] != n_classes:
        raise ValueError(f"scores must be (N, {n_classes}) for {n_classes} classes; got {scores.shape}")
    if y_true.ndim != 1 or len(y_true) != len(scores):
        raise ValueError(f"y_true must be ({len(scores)},) to match scores; got {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no studies to evaluate")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold class indices in [0, {n_classes})")
    return y_true, scores
