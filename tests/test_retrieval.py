"""Cross-modal retrieval metrics on hand-made similarity matrices."""
import numpy as np
import pytest
import torch

from m3bind.eval.retrieval import (concept_auc, concept_chance, concept_precision_at_k, query_scores, recall_at_k,
                                   retrieval_scores)

CARDIO, EFFUSION = frozenset({"cardiomegaly"}), frozenset({"effusion"})
NORMAL = frozenset()


def test_recall_at_k_counts_the_own_patients_rank():
    # query a ranks its own study 2nd, query b 3rd
    ranking = np.array([[1, 0, 2], [0, 2, 1], [2, 1, 0]])
    recall = recall_at_k(ranking, ["a", "b", "c"], ["a", "b", "c"], ks=(1, 2, 3))
    assert recall == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_concept_precision_and_its_chance():
    ranking = np.array([[0, 1, 2], [2, 1, 0]])
    queries = [CARDIO, NORMAL]
    gallery = [CARDIO, NORMAL, CARDIO]
    precision = concept_precision_at_k(ranking, queries, gallery, ks=(1, 2))
    # query 0: top1 cardio (hit), top2 + normal (miss) -> 1, 0.5; query 1: cardio, normal -> 0, 0.5
    assert precision == {1: pytest.approx(0.5), 2: pytest.approx(0.5)}
    assert concept_chance(queries, gallery) == pytest.approx((2 / 3 + 1 / 3) / 2)


def test_concept_auc_matches_a_pairwise_count():
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(4, 6))
    queries = [CARDIO, CARDIO | EFFUSION, NORMAL, EFFUSION]
    gallery = [CARDIO, NORMAL, EFFUSION, CARDIO | EFFUSION, NORMAL, CARDIO]
    got = concept_auc(sims, queries, gallery)

    def pairwise(concept):
        pos = [j for j, g in enumerate(gallery) if concept in g]
        neg = [j for j, g in enumerate(gallery) if concept not in g]
        per_query = [np.mean([sims[i, p] > sims[i, n] for p in pos for n in neg])
                     for i, q in enumerate(queries) if concept in q]
        return np.mean(per_query)

    assert set(got) == {"cardiomegaly", "effusion"}
    for concept, value in got.items():
        assert value == pytest.approx(pairwise(concept))


def test_concept_auc_extremes_and_skipped_concepts():
    gallery = [CARDIO, NORMAL, CARDIO, NORMAL]
    similar = np.array([[0.9, 0.1, 0.8, 0.2]])
    assert concept_auc(similar, [CARDIO], gallery) == {"cardiomegaly": 1.0}
    assert concept_auc(-similar, [CARDIO], gallery) == {"cardiomegaly": 0.0}
    # a concept no query shows, or that every gallery study shows, cannot be scored
    assert concept_auc(similar, [NORMAL], gallery) == {}
    assert concept_auc(similar, [CARDIO], [CARDIO] * 4) == {}


def test_retrieval_scores_perfect_alignment():
    emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    concepts = [CARDIO, NORMAL, EFFUSION, CARDIO, NORMAL]
    ids = [f"p{i}" for i in range(5)]
    scores = retrieval_scores(emb, emb, ids, ids, concepts, concepts, ks=(1, 5))
    assert scores["recall"] == {1: 1.0, 5: 1.0}
    assert scores["recall_chance"] == {1: 0.2, 5: 1.0}
    assert scores["concept_precision"][1] == 1.0
    # the query's own study always ranks first, so each cardiomegaly query's AUC is at least 0.5
    assert scores["concept_auc"] >= 0.5 and set(scores["concept_auc_per_concept"]) == {"cardiomegaly", "effusion"}


def test_concept_numbers_are_undefined_when_no_study_shows_a_concept():
    # Two modalities whose labels have nothing in common: after keeping only shared concepts every
    # study is "normal", so every gallery study would match every query (precision 1.0 = chance).
    # Those numbers say nothing; they must be reported as undefined, with Recall@K still measured.
    emb = torch.nn.functional.normalize(torch.eye(3), dim=-1)
    scores = retrieval_scores(emb, emb, ["a", "b", "c"], ["a", "b", "c"], [NORMAL] * 3, [NORMAL] * 3, ks=(1, 2))
    assert scores["recall"] == {1: 1.0, 2: 1.0}
    assert scores["concept_precision"] == {1: None, 2: None}
    assert scores["concept_chance"] is None and scores["concept_auc"] is None
    # One study showing a shared concept makes precision defined again (normal vs cardiomegaly).
    scores = retrieval_scores(emb, emb, ["a", "b", "c"], ["a", "b", "c"], [CARDIO, NORMAL, NORMAL],
                              [CARDIO, NORMAL, NORMAL], ks=(1,))
    assert scores["concept_precision"] == {1: 1.0}
    assert scores["concept_chance"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 3) / 3)


def test_queries_without_their_patient_in_the_gallery_are_counted():
    from m3bind.eval.retrieval import query_scores

    sims = np.eye(3)
    scores = query_scores(sims, ["p1", "p2", "p9"], ["p1", "p2", "p3"], [frozenset()] * 3, [frozenset()] * 3, (1,))
    summary = scores.summary()
    assert summary["queries_without_partner"] == 1 and summary["queries"] == 3
    assert summary["recall"][1] == pytest.approx(2 / 3)   # the unpartnered query can only miss


def test_recall_chance_is_k_over_g_for_one_study_each_and_exact_for_several():
    from itertools import combinations

    from m3bind.eval.retrieval import recall_chance

    gallery = ["a", "b", "c", "d", "e", "f"]
    assert recall_chance(["a", "c"], gallery, [1, 2, 6, 10]) == pytest.approx({1: 1 / 6, 2: 2 / 6, 6: 1.0, 10: 1.0})
    # patient "a" has 3 of 6 gallery studies; "z" has none: brute force over every random top K
    gallery = ["a", "a", "a", "b", "c", "d"]
    for k in (1, 2, 3, 4):
        tops = list(combinations(range(6), k))
        hit_a = np.mean([any(gallery[i] == "a" for i in top) for top in tops])
        hit_b = np.mean([any(gallery[i] == "b" for i in top) for top in tops])
        assert recall_chance(["a", "b", "z"], gallery, [k])[k] == pytest.approx((hit_a + hit_b + 0.0) / 3)


def test_the_reported_recall_chance_is_what_random_rankings_score():
    """Several studies of one patient in the gallery make a hit likelier: the chance row must say so."""
    rng = np.random.default_rng(0)
    gallery = ["p0", "p0", "p0", "p1", "p2", "p3", "p4", "p5"]
    queries = ["p0", "p1", "p2"]
    none = [frozenset()] * 8
    draws = [query_scores(rng.normal(size=(3, 8)), queries, gallery, none[:3], none, ks=[1, 3]).recall
             for _ in range(4000)]
    summary = query_scores(rng.normal(size=(3, 8)), queries, gallery, none[:3], none, ks=[1, 3]).summary()
    for k in (1, 3):
        assert np.mean([d[k].mean() for d in draws]) == pytest.approx(summary["recall_chance"][k], abs=0.02)
    assert summary["recall_chance"][1] > 1 / 8


def test_centred_queries_undo_a_hub_that_raw_cosine_ranks_above_every_finding():
    """Every query of modality A shares a direction u with the normal gallery studies of B: raw
    cosine ranks those normals above the studies that show the query's concept (AUC 0, below
    chance); minus A's mean training embedding, the queries rank the concept first."""
    from types import SimpleNamespace

    from m3bind.eval.protocol import pair_query_scores

    u, c = torch.eye(4)[0], torch.eye(4)[1]
    concept_query = torch.nn.functional.normalize(0.8 * u + 0.6 * c, dim=0)
    queries = torch.stack([concept_query, concept_query, u])
    gallery = torch.stack([u, u, torch.nn.functional.normalize(0.1 * u + 0.995 * c, dim=0)])
    cache = {"a": (queries, ["p1", "p2", "p3"], [CARDIO, CARDIO, NORMAL]),
             "b": (gallery, ["p3", "p4", "p1"], [NORMAL, NORMAL, CARDIO])}
    exp = SimpleNamespace(cfg=SimpleNamespace(eval=SimpleNamespace(recall_at=[1])))
    raw = pair_query_scores(exp, cache, [("a", "b")])["a->b"].summary()
    assert raw["concept_auc"] == 0.0
    centre = torch.nn.functional.normalize(torch.stack([u, concept_query]), dim=-1).mean(0)  # half normal, half concept
    centred = pair_query_scores(exp, cache, [("a", "b")], {"a": centre, "b": torch.zeros(4)})["a->b"]
    assert centred.summary()["concept_auc"] == 1.0
    # The same numbers as ranking by (query - centre) . gallery by hand; the gallery is not centred.
    by_hand = query_scores(((queries - centre) @ gallery.T).numpy(), ["p1", "p2", "p3"], ["p3", "p4", "p1"],
                           [CARDIO, CARDIO, NORMAL], [NORMAL, NORMAL, CARDIO], [1])
    assert centred.summary() == by_hand.summary()
