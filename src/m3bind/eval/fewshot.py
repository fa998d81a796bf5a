"""Few-shot linear probes on frozen embeddings (FLAIR's protocol), k shots per class, several seeds.

For each k and seed, k training studies per class are drawn, a logistic regression is fitted on
their embeddings and scored on the whole test set; each metric is reported as mean and std over
the seeds. The classifier is FLAIR's ``LinearProbe``: scikit-learn ``LogisticRegression(C=0.316,
max_iter=1000, class_weight="balanced")`` on the embeddings as they are (FLAIR probes unnormalised
features; m3bind's shared-space embeddings are L2-normalised already).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from m3bind.eval.metrics import classification_metrics

PROBE_C = 0.316          # FLAIR's inverse regularisation strength
PROBE_MAX_ITER = 1000
PROBE_METRICS: tuple[str, ...] = ("accuracy", "f1_macro", "precision_macro", "aca", "auc_macro")


def sample_shots(labels: Sequence[int] | np.ndarray, k: int, seed: int,
                 n_classes: int) -> tuple[np.ndarray, dict[int, int]]:
    """Indices of up to ``k`` training studies per class, drawn without replacement.

    Each class's studies are put in one seeded random order and the first k taken, so for one
    seed the k-shot set contains every smaller shot set: differences between k are then due to
    k, not to a fresh draw. A class with fewer than k studies contributes all of them.

    Returns (sorted indices, {class index: studies available} for classes short of k).
    """
    if k < 1:
        raise ValueError(f"shots must be at least 1, got {k}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen, short = [], {}
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(members)[:k])
        if len(members) < k:
            short[c] = int(len(members))
    return np.sort(np.concatenate(chosen)), short


def fit_probe(train_emb: np.ndarray, train_y: np.ndarray, seed: int) -> LogisticRegression:
    """FLAIR's linear probe, fitted on the given embeddings and class indices."""
    probe = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER, class_weight="balanced", random_state=seed)
    return probe.fit(train_emb, train_y)


def probe_scores(probe: LogisticRegression, test_emb: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) class probabilities; classes the probe never saw in training get 0."""
    scores = np.zeros((len(test_emb), n_classes))
    scores[:, probe.classes_] = probe.predict_proba(test_emb)
    return scores


def linear_probe(train_emb, train_y, test_emb, test_y, shots: Sequence[int], seeds: Sequence[int],
                 classes: Sequence[str]) -> dict:
    """k-shot linear-probe evaluation over several seeds.

    Args:
        train_emb, test_emb: (N, D) frozen embeddings (numpy arrays or CPU tensors).
        train_y, test_y: (N,) class indices into ``classes``.
        shots: the k values (studies per class), e.g. [1, 5, 10].
        seeds: one sample of shots and one fit per seed.
        classes: the class names.

    Returns ``{"classes", "n_test", "seeds", "shots": {k: result}}`` where each result holds
    ``n_train`` (studies used; the same for every seed), ``short_classes`` (class -> studies
    available, for classes with fewer than k), ``mean`` and ``std`` (population std over seeds)
    of each metric in :data:`PROBE_METRICS`, and ``per_seed``: metric -> one value per seed.
    A metric undefined for some seed (``auc_macro`` on a one-class test set) averages the rest,
    or is ``None``.
    """
    classes = list(classes)
    train_emb, test_emb = np.asarray(train_emb, dtype=float), np.asarray(test_emb, dtype=float)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_emb) != len(train_y) or len(test_emb) != len(test_y):
        raise ValueError("embeddings and labels differ in length")
    if not seeds:
        raise ValueError("give at least one seed")

    results = {}
    for k in shots:
        per_seed: dict[str, list[float | None]] = {name: [] for name in PROBE_METRICS}
        n_train, short = 0, {}
        for seed in seeds:
            rows, short_ids = sample_shots(train_y, k, seed, len(classes))
            if len(np.unique(train_y[rows])) < 2:
                raise ValueError(f"{k}-shot sample has fewer than two classes; a probe needs two")
            probe = fit_probe(train_emb[rows], train_y[rows], seed)
            metrics = classification_metrics(test_y, probe_scores(probe, test_emb, len(classes)), classes)
            for name in PROBE_METRICS:
                per_seed[name].append(metrics[name])
            n_train, short = int(len(rows)), {classes[c]: n for c, n in short_ids.items()}
        results[int(k)] = {
            "n_train": n_train,
            "short_classes": short,
            "mean": {name: _mean(values) for name, values in per_seed.items()},
            "std": {name: _std(values) for name, values in per_seed.items()},
            "per_seed": per_seed,
        }
    return {"classes": classes, "n_test": int(len(test_y)), "seeds": [int(s) for s in seeds], "shots": results}


def format_mean_std(mean: float | None, std: float | None, percent: bool = True, digits: int = 1) -> str:
    """'85.3 ± 1.2' (as percentages by default), or 'n/a' for an undefined metric."""
    if mean is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _std(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    if not defined:
        return None
    # Identical values give exactly 0, not the rounding residue of their floating-point mean.
    return 0.0 if len(set(defined)) == 1 else float(np.std(defined))
