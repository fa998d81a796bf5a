"""Evaluation metrics agree with scikit-learn and with hand computations."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from m3bind.eval.metrics import bootstrap_ci, classification_metrics, multilabel_metrics

CLASSES = ["normal", "cardiomegaly", "effusion", "nodule"]


def _random_problem(n: int, n_classes: int, seed: int, signal: float = 1.0):
    """Labels and softmax-probability scores that carry some signal about the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) + signal * np.eye(n_classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def _sklearn_reference(y, scores):
    pred = scores.argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced_accuracy warns when a predicted class is absent
        aca = balanced_accuracy_score(y, pred)
    return {
        "accuracy": accuracy_score(y, pred),
        "f1_macro": f1_score(y, pred, average="macro", zero_division=0),
        "precision_macro": precision_score(y, pred, average="macro", zero_division=0),
        "aca": aca,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_sklearn_on_random_inputs(seed):
    y, probs = _random_problem(200, 4, seed)
    m = classification_metrics(y, probs, CLASSES)
    for name, value in _sklearn_reference(y, probs).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["auc_skipped"] == []
    assert m["n"] == 200
    assert m["chance"] == 0.25
    assert m["majority_rate"] == pytest.approx(np.bincount(y).max() / 200)
    # Per-class recall, by hand.
    pred = probs.argmax(1)
    for c, name in enumerate(CLASSES):
        assert m["recall_per_class"][name] == pytest.approx(np.mean(pred[y == c] == c))
    assert m["aca"] == pytest.approx(np.mean(list(m["recall_per_class"].values())))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(-3, 3)), min_size=2, max_size=40))
def test_per_class_auc_equals_sklearn_with_ties(rows):
    """The rank form of the AUC is sklearn's number, ties included (small integer scores tie often)."""
    positive = np.array([r[0] for r in rows])
    score = np.array([float(r[1]) for r in rows])
    y = positive.astype(int)
    m = classification_metrics(y, np.stack([-score, score], axis=1), ["normal", "finding"])
    if positive.all() or not positive.any():
        assert m["auc_per_class"]["finding"] is None
    else:
        assert m["auc_per_class"]["finding"] == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
        assert m["auc_per_class"]["normal"] == pytest.approx(roc_auc_score(~positive, -score), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 6).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.tuples(st.integers(0, c - 1), st.integers(0, c - 1)), min_size=1, max_size=30))))
def test_single_label_counts_equal_sklearn_with_absent_classes(case):
    """The confusion-matrix metrics are sklearn's numbers when classes are missing from the truth,
    from the predictions, or from both (short lists over up to six classes)."""
    n_classes, rows = case
    y = np.array([r[0] for r in rows])
    pred = np.array([r[1] for r in rows])
    scores = np.eye(n_classes)[pred]  # arg-max is the prediction
    m = classification_metrics(y, scores, [f"c{i}" for i in range(n_classes)])
    for name, value in _sklearn_reference(y, scores).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    recalls = recall_score(y, pred, labels=np.arange(n_classes), average=None, zero_division=0)
    for c in range(n_classes):
        assert m["recall_per_class"][f"c{c}"] == (float(recalls[c]) if (y == c).any() else None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=30))
def test_multilabel_counts_equal_sklearn(rows):
    """Per-finding F1, precision, recall and accuracy are sklearn's binary numbers, including a
    finding nobody has or nobody is called for."""
    truth = np.array([[int(t)] for t, _ in rows])
    probs = np.array([[0.9 if p else 0.1] for _, p in rows])
    pred = (probs[:, 0] >= 0.5).astype(int)
    got = multilabel_metrics(truth, probs)["per_class"]["0"]
    assert got["f1"] == pytest.approx(f1_score(truth[:, 0], pred, zero_division=0), abs=1e-12)
    assert got["precision"] == pytest.approx(precision_score(truth[:, 0], pred, zero_division=0), abs=1e-12)
    assert got["recall"] == pytest.approx(recall_score(truth[:, 0], pred, zero_division=0), abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(truth[:, 0], pred), abs=1e-12)


def test_hand_computed_small_case():
    # truth 0 0 1 1 2 2, predictions 0 1 1 1 0 2
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    scores = np.eye(3)[pred]
    m = classification_metrics(y, scores, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_per_class"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.5})
    assert m["aca"] == pytest.approx(2 / 3)
    # precision: a 1/2, b 2/3, c 1/1
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # F1: a 2*(.5*.5)/(1) = .5, b 2*(2/3*1)/(5/3) = .8, c 2*(1*.5)/1.5 = 2/3
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


def test_class_never_predicted():
    y, probs = _random_problem(150, 4, seed=3)
    probs[:, 2] = -1.0  # class 2 is never the arg-max
    assert 2 not in probs.argmax(1) and 2 in y
    m = classification_metrics(y, probs, CLASSES)
    for name, value in _sklearn_reference(y, probs).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    assert m["recall_per_class"]["effusion"] == 0.0
    assert m["auc_per_class"]["effusion"] == pytest.approx(0.5)  # constant column: ties everywhere


def test_class_absent_from_truth_is_skipped_for_auc_and_aca():
    y, probs = _random_problem(150, 4, seed=4)
    y[y == 3] = 0  # "nodule" no longer occurs, but it is still scored and sometimes predicted
    assert 3 in probs.argmax(1)
    m = classification_metrics(y, probs, CLASSES)
    for name, value in _sklearn_reference(y, probs).items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    assert m["auc_skipped"] == ["nodule"]
    assert m["auc_per_class"]["nodule"] is None
    assert m["recall_per_class"]["nodule"] is None
    by_column = [roc_auc_score(y == c, probs[:, c]) for c in range(3)]
    assert m["auc_macro"] == pytest.approx(np.mean(by_column))
    json.dumps(m)  # no NaN, no numpy types: goes straight into report.json


def test_single_label_input_errors():
    with pytest.raises(ValueError, match="scores must be"):
        classification_metrics([0, 1], np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics([0, 5], np.zeros((2, 2)), ["a", "b"])


def test_multilabel_metrics_equal_per_column_sklearn():
    rng = np.random.default_rng(5)
    Y = (rng.random((120, 5)) < 0.3).astype(int)
    probs = np.clip(0.35 * Y + rng.random((120, 5)) * 0.7, 0, 1)
    Y[:, 4] = 0  # a finding nobody has: AUC undefined, skipped
    m = multilabel_metrics(Y, probs, threshold=0.5, classes=list("abcde"))
    pred = (probs >= 0.5).astype(int)
    aucs = [roc_auc_score(Y[:, c], probs[:, c]) for c in range(4)]
    assert m["auc_macro"] == pytest.approx(np.mean(aucs))
    assert m["auc_skipped"] == ["e"]
    for c, name in enumerate("abcd"):
        assert m["per_class"][name]["auc"] == pytest.approx(aucs[c])
    assert m["f1_macro"] == pytest.approx(f1_score(Y, pred, average="macro", zero_division=0))
    assert m["precision_macro"] == pytest.approx(precision_score(Y, pred, average="macro", zero_division=0))
    assert m["accuracy_macro"] == pytest.approx(np.mean([accuracy_score(Y[:, c], pred[:, c]) for c in range(5)]))
    assert m["per_class"]["a"]["n_positive"] == int(Y[:, 0].sum())
    json.dumps(m)


def test_multilabel_threshold_moves_decisions():
    Y = np.array([[1], [1], [0], [0]])
    probs = np.array([[0.9], [0.4], [0.3], [0.1]])
    assert multilabel_metrics(Y, probs, threshold=0.5)["per_class"]["0"]["recall"] == 0.5
    assert multilabel_metrics(Y, probs, threshold=0.35)["per_class"]["0"]["recall"] == 1.0
    assert multilabel_metrics(Y, probs, threshold=0.35)["accuracy_macro"] == 1.0
    assert multilabel_metrics(Y, probs)["per_class"]["0"]["auc"] == 1.0  # threshold-free


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_data():
    def accuracy(y, s):
        return float(np.mean(s.argmax(1) == y))

    widths = []
    for n in (100, 1600):
        y, probs = _random_problem(n, 4, seed=6)
        low, high = bootstrap_ci(accuracy, y, probs, n=300, seed=0)
        assert low <= accuracy(y, probs) <= high
        widths.append(high - low)
    # The CI width shrinks like 1/sqrt(N): 16x the data, about a quarter of the width.
    assert widths[1] < 0.4 * widths[0]
    # Seeded: the same call gives the same interval; a narrower alpha gives a narrower interval.
    y, probs = _random_problem(200, 4, seed=7)
    assert bootstrap_ci(accuracy, y, probs, n=200, seed=3) == bootstrap_ci(accuracy, y, probs, n=200, seed=3)
    lo95, hi95 = bootstrap_ci(accuracy, y, probs, n=400, seed=0, alpha=0.05)
    lo50, hi50 = bootstrap_ci(accuracy, y, probs, n=400, seed=0, alpha=0.5)
    assert lo95 < lo50 < hi50 < hi95


def test_bootstrap_skips_resamples_where_metric_is_undefined():
    # Two positives in 30 studies: many resamples hold no positive, where AUC is undefined.
    y = np.zeros(30, dtype=int)
    y[:2] = 1
    scores = np.linspace(1, 0, 30)
    low, high = bootstrap_ci(lambda t, s: roc_auc_score(t, s), y, scores, n=200, seed=0)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)  # positives always ranked first
    with pytest.raises(ValueError, match="undefined on every"):
        bootstrap_ci(lambda t, s: None, y, scores, n=10)
