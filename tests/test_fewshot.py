"""Few-shot linear probes: sampling, determinism, and measurable effects of k."""
from __future__ import annotations

import numpy as np
import pytest

from m3bind.eval.fewshot import format_mean_std, linear_probe, sample_shots

CLASSES = ["a", "b", "c"]


def _blobs(n_per_class: int, spread: float, seed: int, dim: int = 8):
    """Gaussian clusters around well-separated centres (one per class)."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * np.eye(len(CLASSES), dim)
    y = np.repeat(np.arange(len(CLASSES)), n_per_class)
    x = centres[y] + spread * rng.normal(size=(len(y), dim))
    return x, y


def test_sample_shots_takes_exactly_k_per_class_and_records_short_classes():
    labels = np.array([0] * 20 + [1] * 3 + [2] * 12)
    rows, short = sample_shots(labels, k=5, seed=0, n_classes=4)  # class 3 has no study at all
    assert np.bincount(labels[rows], minlength=4).tolist() == [5, 3, 5, 0]
    assert short == {1: 3, 3: 0}
    assert len(set(rows.tolist())) == len(rows)  # without replacement


def test_sampling_is_seeded_and_nested():
    labels = np.repeat(np.arange(3), 30)
    first, _ = sample_shots(labels, k=4, seed=1, n_classes=3)
    again, _ = sample_shots(labels, k=4, seed=1, n_classes=3)
    other, _ = sample_shots(labels, k=4, seed=2, n_classes=3)
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()
    bigger, _ = sample_shots(labels, k=10, seed=1, n_classes=3)
    assert set(first.tolist()) <= set(bigger.tolist())


def test_separable_problem_reaches_perfect_accuracy_with_zero_std():
    train_x, train_y = _blobs(40, spread=0.2, seed=0)
    test_x, test_y = _blobs(30, spread=0.2, seed=1)
    out = linear_probe(train_x, train_y, test_x, test_y, shots=[10], seeds=[0, 1, 2], classes=CLASSES)
    result = out["shots"][10]
    assert result["n_train"] == 30 and result["short_classes"] == {}
    assert result["per_seed"]["accuracy"] == [1.0, 1.0, 1.0]
    assert result["mean"]["accuracy"] == 1.0 and result["std"]["accuracy"] == 0.0
    assert result["mean"]["aca"] == 1.0 and result["mean"]["f1_macro"] == 1.0
    assert out["n_test"] == 90 and out["seeds"] == [0, 1, 2]


def test_deterministic_and_seed_dependent():
    train_x, train_y = _blobs(40, spread=2.0, seed=2)
    test_x, test_y = _blobs(40, spread=2.0, seed=3)
    run = lambda seeds: linear_probe(train_x, train_y, test_x, test_y, [2], seeds, CLASSES)["shots"][2]  # noqa: E731
    assert run([0, 1, 2, 3]) == run([0, 1, 2, 3])
    accuracies = run([0, 1, 2, 3])["per_seed"]["accuracy"]
    assert len(set(accuracies)) > 1  # different seeds draw different shots
    per_seed = run([0, 1, 2, 3])
    assert per_seed["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert per_seed["std"]["accuracy"] == pytest.approx(np.std(accuracies))


def test_results_improve_with_k_on_a_noisy_problem():
    train_x, train_y = _blobs(60, spread=2.5, seed=4)
    test_x, test_y = _blobs(100, spread=2.5, seed=5)
    out = linear_probe(train_x, train_y, test_x, test_y, shots=[1, 5, 50], seeds=list(range(8)), classes=CLASSES)
    means = [out["shots"][k]["mean"]["accuracy"] for k in (1, 5, 50)]
    assert means[0] < means[1] < means[2]
    assert means[2] - means[0] > 0.1
    # With more shots the result depends less on which shots were drawn.
    assert out["shots"][50]["std"]["accuracy"] < out["shots"][1]["std"]["accuracy"]


def test_short_class_uses_all_it_has():
    train_x, train_y = _blobs(20, spread=0.3, seed=6)
    keep = (train_y != 2) | (np.arange(len(train_y)) % 20 < 3)  # class "c" keeps 3 studies
    test_x, test_y = _blobs(10, spread=0.3, seed=7)
    out = linear_probe(train_x[keep], train_y[keep], test_x, test_y, shots=[10], seeds=[0], classes=CLASSES)
    assert out["shots"][10]["n_train"] == 23
    assert out["shots"][10]["short_classes"] == {"c": 3}


def test_format_mean_std():
    assert format_mean_std(0.8531, 0.0123) == "85.3 ± 1.2"
    assert format_mean_std(0.8531, 0.0123, percent=False, digits=3) == "0.853 ± 0.012"
    assert format_mean_std(0.5, None) == "50.0"
    assert format_mean_std(None, None) == "n/a"
