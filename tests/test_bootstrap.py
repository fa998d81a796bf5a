"""Bootstrap intervals: every resampled statistic equals the statistic computed directly on the
resampled studies / queries listed out, and the intervals are the percentiles of those."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from m3bind.eval.bootstrap import (Bootstrap, concept_mean_statistic, macro_auc_statistic, mean_statistic,
                                   weighted_auc)
from m3bind.eval.metrics import classification_metrics
from m3bind.eval.retrieval import embedding_query_scores, mean_query_scores, retrieval_scores

BOOT = Bootstrap(resamples=40, seed=7)


def _direct_resamples(n):
    return BOOT.indices(n), BOOT.counts(n)


def test_counts_are_the_drawn_indices_and_depend_only_on_seed_and_size():
    drawn, counts = _direct_resamples(9)
    assert counts.shape == (40, 9) and (counts.sum(1) == 9).all()
    for row, index in zip(counts, drawn):
        assert (row == np.bincount(index, minlength=9)).all()
    assert (Bootstrap(resamples=40, seed=7).counts(9) == counts).all()
    assert not (Bootstrap(resamples=40, seed=8).counts(9) == counts).all()


def test_mean_and_auc_statistics_equal_direct_computation_on_each_resample():
    rng = np.random.default_rng(0)
    n, classes = 30, 4
    targets = rng.integers(0, classes, n)
    scores = np.round(rng.normal(size=(n, classes)), 1)  # rounded: ties occur
    correct = (scores.argmax(1) == targets).astype(float)
    drawn, counts = _direct_resamples(n)
    accuracy = mean_statistic(correct, counts)
    macro = macro_auc_statistic(targets, scores, counts)
    single = weighted_auc(targets == 2, scores[:, 2], counts)
    for b, rows in enumerate(drawn):
        direct = classification_metrics(targets[rows], scores[rows], [str(c) for c in range(classes)])
        assert accuracy[b] == pytest.approx(direct["accuracy"])
        assert macro[b] == pytest.approx(direct["auc_macro"])
        assert single[b] == pytest.approx(roc_auc_score(targets[rows] == 2, scores[rows, 2]))


def test_auc_is_nan_when_a_resample_has_one_kind_only():
    counts = np.array([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    values = weighted_auc(np.array([True, False, False]), np.array([0.9, 0.1, 0.2]), counts)
    assert np.isnan(values[0]) and values[1] == 1.0


def test_concept_auc_statistic_equals_retrieval_scores_on_the_resampled_queries():
    gen = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(25, 6, generator=gen), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(20, 6, generator=gen), dim=-1)
    kinds = [frozenset(), frozenset({"a"}), frozenset({"b"}), frozenset({"a", "b"})]
    qc = [kinds[i % 4] for i in range(25)]
    gc = [kinds[(i * 3) % 4] for i in range(20)]
    q_ids = [f"p{i}" for i in range(25)]
    g_ids = [f"p{i}" for i in range(20)]
    scores = embedding_query_scores(q, g, q_ids, g_ids, qc, gc, ks=(1, 5))
    assert scores.summary() == retrieval_scores(q, g, q_ids, g_ids, qc, gc, ks=(1, 5))
    drawn, counts = _direct_resamples(25)
    resampled = scores.resampled(counts)
    for b, rows in enumerate(drawn):
        direct = retrieval_scores(q[rows], g, [q_ids[i] for i in rows], g_ids, [qc[i] for i in rows], gc, ks=(1, 5))
        assert resampled["concept_auc"][b] == pytest.approx(direct["concept_auc"])
        assert resampled["recall"][5][b] == pytest.approx(direct["recall"][5])
        assert resampled["concept_precision"][1][b] == pytest.approx(direct["concept_precision"][1])


def test_concept_statistic_skips_concepts_no_resampled_query_shows():
    per_query = np.array([[0.8, np.nan], [np.nan, 0.2], [0.6, np.nan]])
    counts = np.array([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    assert concept_mean_statistic(per_query, counts) == pytest.approx([(0.8 + 1.2) / 3, ((0.8 + 0.6) / 2 + 0.2) / 2])


def test_interval_is_the_percentile_range_and_paired_differences_share_resamples():
    boot = Bootstrap(resamples=1000, seed=0)
    values = np.arange(1000, dtype=float)
    assert boot.interval(values) == pytest.approx((np.quantile(values, 0.025), np.quantile(values, 0.975)))
    assert boot.interval(np.full(5, np.nan)) is None
    # Two variants right on the same 200 items, but for 20 of them: the paired difference is
    # tighter around 0.1 than the difference of independently resampled accuracies.
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.6).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:20]] = 1.0
    counts = boot.counts(200)
    low, high = boot.interval(mean_statistic(b, counts) - mean_statistic(a, counts))
    other = Bootstrap(resamples=1000, seed=1).counts(200)
    unpaired_low, unpaired_high = boot.interval(mean_statistic(b, other) - mean_statistic(a, counts))
    assert 0.05 < low < 0.1 < high < 0.16 and unpaired_high - unpaired_low > 1.5 * (high - low)


def test_head_draws_average_per_query_and_their_summary_is_the_mean_of_the_draws():
    gen = torch.Generator().manual_seed(5)
    kinds = [frozenset(), frozenset({"a"}), frozenset({"b"})]
    qc, gc = [kinds[i % 3] for i in range(12)], [kinds[(i + 1) % 3] for i in range(15)]
    ids_q, ids_g = [str(i) for i in range(12)], [str(i) for i in range(15)]
    g = torch.randn(15, 4, generator=gen)
    draws = [embedding_query_scores(torch.randn(12, 4, generator=gen), g, ids_q, ids_g, qc, gc, ks=(1, 5))
             for _ in range(3)]
    mean = mean_query_scores(draws).summary()
    assert mean["concept_auc"] == pytest.approx(np.mean([d.summary()["concept_auc"] for d in draws]))
    assert mean["recall"][5] == pytest.approx(np.mean([d.summary()["recall"][5] for d in draws]))
