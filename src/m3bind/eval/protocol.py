"""The evaluation protocol of an experiment: which studies, prompts, pairs and baselines every
stage and the report use, so that a number means the same thing wherever it appears.

Everything here takes an :class:`~m3bind.experiment.Experiment` (for its data and settings)
and encoder views (anything with ``encode_image``, ``encode_texts``, ``logit_scale`` and
``eval``: :class:`m3bind.models.base.EncoderView`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

import numpy as np
import torch

from m3bind.data.manifest import parse_labels
from m3bind.data.store import take_rows
from m3bind.eval.retrieval import retrieval_scores
from m3bind.eval.zeroshot import accuracy, class_prototypes, single_label_targets, zero_shot_logits
from m3bind.experiment import Experiment
from m3bind.models.embedding import embed_in_batches
from m3bind.models.view import native_view

# Images per forward pass when evaluating (kept fixed: the numbers must not depend on it).
EVAL_BATCH = 128
# Random head draws averaged for the unbound retrieval baseline (see unbound_retrieval).
UNBOUND_HEAD_DRAWS = 10


def embed_images(encode_image, images) -> torch.Tensor:
    """Embeddings of ``images`` (a tensor or an on-disk row store) as a float CPU tensor."""
    return embed_in_batches(lambda batch: encode_image(batch).float().cpu(), images, EVAL_BATCH)


def embed_texts(encode_texts, texts) -> torch.Tensor:
    """Embeddings of ``texts`` as a float CPU tensor."""
    return embed_in_batches(lambda batch: encode_texts(list(batch)).float().cpu(), texts, EVAL_BATCH)


# --- zero-shot ------------------------------------------------------------------------------
def prompt_set_for(exp: Experiment, modality: str):
    """The modality's zero-shot prompt set: the config's file, else the built-in one."""
    from m3bind.config import resolve_path
    from m3bind.eval.prompts import load_prompt_file, load_prompt_set

    path = exp.cfg.modalities[modality].prompts
    return load_prompt_file(resolve_path(exp.config_path, path)) if path else load_prompt_set(modality)


def class_prompts(exp: Experiment, modality: str, classes: Sequence[str], style: str = "expert") -> dict:
    """Prompts per class: 'naive' (the class name in the template) or 'expert' (FLAIR-style ensemble)."""
    from m3bind.eval.prompts import expert_prompts, naive_prompts

    prompt_set = prompt_set_for(exp, modality)
    return (expert_prompts if style == "expert" else naive_prompts)(prompt_set, classes)


def modality_classes(exp: Experiment, modality: str) -> list[str]:
    return ["normal", *exp.manifest(modality).label_names()]


@torch.no_grad()
def zero_shot_accuracy(view, studies, classes: Sequence[str], prompts: dict[str, list[str]]) -> dict[str, float]:
    """Single-label zero-shot accuracy over normal + findings (multi-finding studies left out)."""
    view.eval()
    keep, targets = single_label_targets(studies.labels, classes)
    if len(keep) == 0:
        return {"accuracy": float("nan"), "n": 0, "chance": 1.0 / len(classes)}
    image_emb = embed_images(view.encode_image, take_rows(studies.images, keep))
    logits = zero_shot_logits(image_emb, class_prototypes(view.encode_texts, prompts))
    return {"accuracy": accuracy(logits, targets), "n": int(len(keep)), "chance": 1.0 / len(classes)}


def modality_zero_shot(exp: Experiment, modality: str, view, style: str = "expert") -> dict[str, float]:
    """Zero-shot accuracy of ``view`` on the modality's test split with its prompt set."""
    classes = modality_classes(exp, modality)
    return zero_shot_accuracy(view, exp.studies(modality, "test"), classes,
                              class_prompts(exp, modality, classes, style))


def zero_shot_by_modality(exp: Experiment, views: Mapping) -> dict[str, dict]:
    """:func:`modality_zero_shot` for every modality of ``views``."""
    return {m: modality_zero_shot(exp, m, view) for m, view in views.items()}


def heldout_texts(exp: Experiment, modalities: Sequence[str], per_modality: int = 32) -> list[str]:
    """Validation texts from every corpus (never trained on) for the text-agreement metric."""
    texts = []
    for m in modalities:
        texts.extend(exp.manifest(m).split("val").texts()[:per_modality])
    return texts


# --- cross-modal retrieval on the paired set ----------------------------------------------------
def retrieval_pairs(exp: Experiment) -> list[tuple[str, str]]:
    """The (query, gallery) pairs to score: ``eval.retrieval_pairs``, else every ordered pair of
    the modalities with a paired manifest."""
    if exp.cfg.eval.retrieval_pairs is not None:
        return [tuple(pair) for pair in exp.cfg.eval.retrieval_pairs]
    return list(permutations(exp.cfg.paired_manifests, 2))


@torch.no_grad()
def paired_test_embeddings(exp: Experiment, encoders: Mapping) -> dict:
    """{modality: (image embeddings, patient ids, concept sets)} on the paired test set, for each
    modality that has an encoder (``encode_image`` callables) and a paired manifest."""
    cache = {}
    for m, encode_image in encoders.items():
        if m not in exp.cfg.paired_manifests:
            continue
        studies = exp.studies(m, "test", paired=True)
        table = exp.paired_manifest(m).split("test").table
        concepts = [frozenset(parse_labels(table.at[row - 1, "concepts"])) if "concepts" in table else frozenset()
                    for row in studies.rows]
        cache[m] = (embed_images(encode_image, studies.images), studies.patient_ids, concepts)
    return cache


def pair_scores(exp: Experiment, cache: Mapping, pairs: Sequence[tuple[str, str]]) -> dict:
    """Recall@K, concept precision@K and concept AUC for each (query, gallery) pair in ``cache``."""
    # A concept counts for a pair only if both modalities can show it (cardiomegaly for X-ray and
    # ECG, but not an effusion that only X-ray sees).
    visible = {m: frozenset().union(*concepts) for m, (_, _, concepts) in cache.items()}
    results = {}
    for query, gallery in pairs:
        if query in cache and gallery in cache:
            q, g = cache[query], cache[gallery]
            shared = visible[query] & visible[gallery]
            results[f"{query}->{gallery}"] = retrieval_scores(q[0], g[0], q[1], g[1], [c & shared for c in q[2]],
                                                              [c & shared for c in g[2]], exp.cfg.eval.recall_at)
    return results


def paired_retrieval(exp: Experiment, views: Mapping, pairs: Sequence[tuple[str, str]]) -> dict:
    """Image-image retrieval on the paired test set in the shared space of ``views``."""
    for view in views.values():
        view.eval()
    wanted = {m for pair in pairs for m in pair} & set(views)
    return pair_scores(exp, paired_test_embeddings(exp, {m: views[m].encode_image for m in wanted}), pairs)


@torch.no_grad()
def unbound_retrieval(exp: Experiment, unbound: Mapping, pairs: Sequence[tuple[str, str]],
                      draws: int = UNBOUND_HEAD_DRAWS) -> dict:
    """Retrieval between the unbound models, averaged over ``draws`` random head draws.

    Before binding the spaces are unrelated: comparing them needs some map into one space, and
    with random orthogonal heads every score is a random variable whose mean is chance (flipping
    one head's sign turns a concept AUC a into 1 - a). One draw can land far from it either way,
    so the baseline is the mean over draws, with the spread of the concept AUC beside it.
    """
    from m3bind.models.heads import BindingHead

    wanted = {m for pair in pairs for m in pair} & set(unbound)
    for m in wanted:
        unbound[m].eval()
    native = paired_test_embeddings(exp, {m: native_view(unbound[m].model).encode_image for m in wanted})
    runs = []
    for draw in range(draws):
        cache = {}
        for m, (emb, ids, concepts) in native.items():
            # draw 0 uses the unbound variant's own heads (seed + position in the config)
            seed = exp.cfg.seed + list(unbound).index(m) + 1000 * draw
            head = BindingHead(emb.shape[1], exp.cfg.shared_dim, torch.Generator().manual_seed(seed))
            cache[m] = (head(emb), ids, concepts)
        runs.append(pair_scores(exp, cache, pairs))
    return {pair: mean_scores([run[pair] for run in runs]) for pair in runs[0]}


def mean_scores(runs: list[dict]) -> dict:
    """Average retrieval_scores outputs leaf by leaf; adds the draw count and concept-AUC spread."""
    def mean(values):
        if isinstance(values[0], dict):
            return {k: mean([v[k] for v in values]) for k in values[0]}
        if values[0] is None or isinstance(values[0], int):
            return values[0]
        return float(np.mean(values))

    out = mean(runs)
    out["head_draws"] = len(runs)
    aucs = [run["concept_auc"] for run in runs if run["concept_auc"] is not None]
    out["concept_auc_std"] = float(np.std(aucs)) if aucs else None
    return out
