"""Cross-modal retrieval between two image modalities in the shared space.

A query study of modality A ranks every gallery study of modality B by cosine similarity.
- Recall@K by patient: the gallery holds the query patient's own study; is it in the top K?
  Chance is K / gallery size.
- Concept precision@K (label-aware): synthetic patients with the same findings are
  interchangeable, so also score the share of the top K that share the query's cross-modal
  concept set (both "no concept" counts as a match: normal finds normal).
- Concept AUC: for every query that shows a concept c, the ROC AUC with which its similarities
  separate the gallery studies showing c from those that do not; averaged over the queries of
  each concept, then over concepts. Chance is 0.5 whatever the class balance, and, unlike the
  precision, a ranking that puts every normal study first cannot score well on it (normal
  studies dominate a gallery and attract every query when they sit near the centre).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def recall_at_k(ranking: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str],
                ks: Sequence[int]) -> dict[int, float]:
    """Share of queries whose own patient's gallery study is among the top K."""
    gallery_ids = np.asarray(gallery_ids)
    hits = gallery_ids[ranking] == np.asarray(query_ids)[:, None]  # (Q, G)
    first_hit = np.where(hits.any(1), hits.argmax(1), ranking.shape[1])
    return {k: float((first_hit < k).mean()) for k in ks}


def concept_precision_at_k(ranking: np.ndarray, query_concepts: Sequence[frozenset],
                           gallery_concepts: Sequence[frozenset], ks: Sequence[int]) -> dict[int, float]:
    """Mean share of the top K whose concept set equals the query's."""
    out = {}
    for k in ks:
        scores = [np.mean([gallery_concepts[j] == query_concepts[q] for j in ranking[q, :k]])
                  for q in range(len(query_concepts))]
        out[k] = float(np.mean(scores))
    return out


def concept_chance(query_concepts: Sequence[frozenset], gallery_concepts: Sequence[frozenset]) -> float:
    """Expected concept precision of a random ranking."""
    gallery = list(gallery_concepts)
    return float(np.mean([sum(g == q for g in gallery) / len(gallery) for q in query_concepts]))


def concept_auc(sims: np.ndarray, query_concepts: Sequence[frozenset],
                gallery_concepts: Sequence[frozenset]) -> dict[str, float]:
    """Per concept: mean over its queries of the ROC AUC separating gallery studies with it.

    Concepts without a query, or whose gallery studies all have (or all lack) them, are left out.
    """
    from sklearn.metrics import roc_auc_score

    out = {}
    for concept in sorted(frozenset().union(*query_concepts, *gallery_concepts)):
        positives = np.array([concept in g for g in gallery_concepts])
        queries = [i for i, q in enumerate(query_concepts) if concept in q]
        if not queries or positives.all() or not positives.any():
            continue
        out[concept] = float(np.mean([roc_auc_score(positives, sims[i]) for i in queries]))
    return out


def retrieval_scores(query_emb: torch.Tensor, gallery_emb: torch.Tensor, query_ids: Sequence[str],
                     gallery_ids: Sequence[str], query_concepts: Sequence[frozenset],
                     gallery_concepts: Sequence[frozenset], ks: Sequence[int] = (1, 5, 10)) -> dict:
    sims = (query_emb.float() @ gallery_emb.float().T).cpu().numpy()
    ranking = np.argsort(-sims, axis=1, kind="stable")
    n = len(gallery_ids)
    per_concept = concept_auc(sims, query_concepts, gallery_concepts)
    return {
        "recall": recall_at_k(ranking, query_ids, gallery_ids, ks),
        "recall_chance": {k: min(1.0, k / n) for k in ks},
        "concept_precision": concept_precision_at_k(ranking, query_concepts, gallery_concepts, ks),
        "concept_chance": concept_chance(query_concepts, gallery_concepts),
        "concept_auc": float(np.mean(list(per_concept.values()))) if per_concept else None,
        "concept_auc_per_concept": per_concept,
        "queries": len(query_ids), "gallery": n,
    }
