"""The evaluation protocol of an experiment: which studies, prompts, pairs and baselines every
stage and the report use, so that a number means the same thing wherever it appears.

Splits: every choice (prototype rule, chaining profile, any setting tuned by hand) and every
stage's own diagnostic line reads the validation split (:data:`TUNING_SPLIT`); the test split
is read once, by the ``evaluate`` stage, for the reported numbers. Each function takes the split
it reads as an argument, so a caller cannot read test by accident.

Everything here takes an :class:`~m3bind.experiment.Experiment` (for its data and settings)
and encoder views (anything with ``encode_image``, ``encode_texts``, ``logit_scale`` and
``eval``: :class:`m3bind.models.base.EncoderView`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

import numpy as np
import torch

from m3bind.data.manifest import label_key, parse_labels
from m3bind.data.store import take_rows
from m3bind.errors import DataError
from m3bind.eval.retrieval import QueryScores, embedding_query_scores, mean_query_scores
from m3bind.eval.zeroshot import PROTOTYPE_RULES, PrototypeRule, ZeroShotScores, class_prototypes, single_label_targets
from m3bind.experiment import Experiment
from m3bind.models.embedding import embed_in_batches, image_batch_size
from m3bind.models.view import native_view

# Images per forward pass when evaluating, at most (fewer only for studies so large that 128 would
# exceed models.embedding.EMBED_BATCH_BYTES); fixed for a given input size, so the numbers do not
# depend on the machine.
EVAL_BATCH = 128
# Random head draws averaged for the chance-level retrieval baseline (see random_head_scores).
RANDOM_HEAD_DRAWS = 10
TUNING_SPLIT = "val"
REPORT_SPLIT = "test"
# The prototype rule of the stages' own diagnostic lines when eval.prototypes is "auto" (the
# evaluate stage chooses its rule on validation; see choose_prototype_rule).
STAGE_PROTOTYPE_RULE = "renormalised"
# Image-image similarities of the retrieval tables (see choose_retrieval_similarity); the first
# is the default and wins ties.
RETRIEVAL_SIMILARITIES = {
    "cosine": "cosine similarity of the two studies' embeddings",
    "centred": "the query's embedding minus its modality's mean training embedding, against the gallery's "
               "(removes the direction every study of the query's modality shares, which otherwise draws every "
               "query to the gallery studies nearest that direction, whatever their findings)",
}
# Training studies (evenly spaced) whose mean is a modality's centre: the mean's error shrinks as
# 1/sqrt(n), and a dataset of 377,000 studies should not be embedded in full to estimate it.
CENTRE_STUDIES = 2000


def embed_images(encode_image, images) -> torch.Tensor:
    """Embeddings of ``images`` (a tensor or an on-disk row store) as a float CPU tensor."""
    return embed_in_batches(lambda batch: encode_image(batch).float().cpu(), images,
                            image_batch_size(images, EVAL_BATCH))


def embed_view_images(exp: Experiment, view, images) -> torch.Tensor:
    """``embed_images(view.encode_image, images)``, through the experiment's image-embedding memo
    while one is active (:meth:`Experiment.sharing_image_embeddings`): the image model's part
    is then computed once per study set and image side, and only the head per view. Same
    numbers either way: the head sees the same rows in the same slices."""
    # A SharedSpaceView's image model, or a BoundModality's model; any other view is embedded as it is.
    model = getattr(view, "image_model", None)
    model = getattr(view, "model", None) if model is None else model
    head = getattr(view, "head", None)
    if exp.image_memo is None or not isinstance(model, torch.nn.Module) or head is None:
        return embed_images(view.encode_image, images)
    batch_size = image_batch_size(images, EVAL_BATCH)
    native = exp.image_memo.native(model, images, batch_size)
    return embed_in_batches(lambda rows: head(rows.to(model.device)).float().cpu(), native, batch_size)


def embed_texts(encode_texts, texts) -> torch.Tensor:
    """Embeddings of ``texts`` as a float CPU tensor, one row per text in the order given.

    Each distinct text is encoded once (a third of the real reports repeat another word for
    word), shortest first: a batch is padded to its longest text, and real reports range from
    15 to 180 words. Padding is masked, so a text's embedding does not depend on its batch
    beyond float rounding.
    """
    distinct = sorted(dict.fromkeys(texts), key=len)
    row = {text: i for i, text in enumerate(distinct)}
    embedded = embed_in_batches(lambda batch: encode_texts(list(batch)).float().cpu(), distinct, EVAL_BATCH)
    return embedded[torch.tensor([row[text] for text in texts], dtype=torch.long)]


# --- zero-shot ------------------------------------------------------------------------------
def prompt_set_for(exp: Experiment, modality: str):
    """The modality's zero-shot prompt set: the config's file, else the built-in one, else the
    built-in one of the modality it is handled ``like`` when that set knows at least half of its
    findings, else an empty set (every class then gets naive prompts from its name; see
    class_prompts). :func:`prompt_set_origin` says which one it is."""
    from m3bind.config import resolve_path
    from m3bind.eval.prompts import empty_prompt_set, load_prompt_file, load_prompt_set

    origin = prompt_set_origin(exp, modality)
    if origin == "file":
        return load_prompt_file(resolve_path(exp.config_path, exp.cfg.modalities[modality].prompts))
    return empty_prompt_set(modality) if origin is None else load_prompt_set(origin)


def prompt_set_origin(exp: Experiment, modality: str) -> str | None:
    """Where :func:`prompt_set_for` takes the modality's prompts from: 'file' (the config's
    ``prompts``), the name of a shipped set, or None (no set: naive prompts only)."""
    from m3bind.eval.prompts import available_prompt_sets, load_prompt_set

    spec = exp.cfg.modalities[modality]
    if spec.prompts:
        return "file"
    if modality in available_prompt_sets():
        return modality
    # A user who names the chest X-ray modality "mimic" or "cxr" keeps the X-ray prompts for the
    # findings they describe. A mammography set handled like xray shares a word or two with the
    # chest findings ("mass") but not their meaning, so it gets naive prompts rather than chest
    # descriptions in a chest template: the set must know at least half of the findings.
    kind = exp.known_as(modality)
    if kind in available_prompt_sets():
        shipped = load_prompt_set(kind)
        findings = exp.manifest(modality).label_names()
        known = sum(shipped.find(name) is not None for name in findings)
        if findings and 2 * known >= len(findings):
            return kind
    return None


def class_prompts(exp: Experiment, modality: str, classes: Sequence[str], style: str = "expert",
                  rule: PrototypeRule | None = None) -> dict[str, list[str]]:
    """Prompts per class: 'naive' (the class name in the template) or 'expert' (the prompt file's
    descriptions, with the bare class name when ``rule`` says so; a class the file does not list
    falls back to its naive prompt)."""
    from m3bind.eval.prompts import expert_prompts, naive_prompts

    prompt_set = prompt_set_for(exp, modality)
    if style == "naive":
        return naive_prompts(prompt_set, classes)
    return expert_prompts(prompt_set, classes, class_name=(rule or stage_prototype_rule(exp)).class_name)


def prompt_corpus(exp: Experiment, modality: str) -> list[str]:
    """Every prompt text zero-shot evaluation may embed for this modality (naive, expert with and
    without the bare class name, sampled, presence pairs), once each: what ``distill.prompt_texts``
    adds to the student's KD texts. Built from the prompt file and the label names only."""
    from m3bind.eval.prompts import expert_prompts, naive_prompts, presence_pairs, sampled_prompts

    prompt_set = prompt_set_for(exp, modality)
    classes = modality_classes(exp, modality)
    groups = [naive_prompts(prompt_set, classes), expert_prompts(prompt_set, classes, class_name=True),
              expert_prompts(prompt_set, classes, class_name=False),
              sampled_prompts(prompt_set, classes, n=10, seed=exp.cfg.seed, use_template=True)]
    texts = [t for group in groups for prompts in group.values() for t in prompts]
    texts += [t for pair in presence_pairs(prompt_set, classes[1:]).values() for t in pair]
    return list(dict.fromkeys(texts))


def modality_classes(exp: Experiment, modality: str) -> list[str]:
    return ["normal", *exp.manifest(modality).label_names()]


def has_findings(exp: Experiment, modality: str) -> bool:
    """Whether the modality's manifest names any finding, so that classifying its studies means
    something. A manifest without a ``labels`` column (or with only normal studies) names none:
    zero-shot and few-shot classification are not measured for it."""
    return len(modality_classes(exp, modality)) >= 2


NO_FINDINGS = "its manifest names no findings (no labels column, or every study normal)"


def has_rows(exp: Experiment, modality: str, split: str) -> bool:
    """Whether the modality's manifest has rows of ``split`` (a dataset may have no val rows)."""
    return bool((exp.manifest(modality).table["split"] == split).any())


def configured_rule(exp: Experiment) -> PrototypeRule | None:
    """``eval.prototypes`` as a rule, or None when it is 'auto' (chosen on validation)."""
    name = exp.cfg.eval.prototypes
    return None if name == "auto" else PROTOTYPE_RULES[name]


def stage_prototype_rule(exp: Experiment) -> PrototypeRule:
    """The rule of the stages' diagnostic lines: the configured one, or STAGE_PROTOTYPE_RULE."""
    return configured_rule(exp) or PROTOTYPE_RULES[STAGE_PROTOTYPE_RULE]


@torch.no_grad()
def zero_shot_scores(view, studies, classes: Sequence[str], prompts: Mapping[str, Sequence[str]],
                     rule: PrototypeRule, image_emb: torch.Tensor | None = None) -> ZeroShotScores | None:
    """Per-study zero-shot scores over normal + findings (multi-finding studies left out); None
    when no study is single-label. ``image_emb``: the studies' embeddings, when already computed."""
    keep, targets = single_label_targets(studies.labels, classes)
    if len(keep) == 0:
        return None
    if image_emb is None:
        view.eval()
        kept = embed_images(view.encode_image, take_rows(studies.images, keep))
    else:
        kept = image_emb[torch.as_tensor(keep)]
    prototypes = class_prototypes(view.encode_texts, prompts, renormalise=rule.renormalise)
    return ZeroShotScores(targets=targets, scores=(kept @ prototypes.T).numpy(), classes=list(classes))


def modality_zero_shot(exp: Experiment, modality: str, view, style: str = "expert", split: str = TUNING_SPLIT,
                       rule: PrototypeRule | None = None) -> dict:
    """Zero-shot accuracy of ``view`` on one split of the modality, with its prompt set; the
    result names the split, the prompt style and the prototype rule."""
    rule = rule or stage_prototype_rule(exp)
    classes = modality_classes(exp, modality)
    described = {"split": split, "prompts": style, "prototypes": rule.name, "chance": 1.0 / len(classes)}
    if not has_findings(exp, modality):
        return {"accuracy": float("nan"), "n": 0, "not_measured": NO_FINDINGS, **described}
    if not has_rows(exp, modality, split):
        return {"accuracy": float("nan"), "n": 0, **described}
    scores = zero_shot_scores(view, exp.studies(modality, split), classes,
                              class_prompts(exp, modality, classes, style, rule), rule)
    if scores is None:
        return {"accuracy": float("nan"), "n": 0, "not_measured": f"every {split} study has several findings "
                "(zero-shot classification scores single-finding studies)", **described}
    return {"accuracy": scores.metrics()["accuracy"], "n": scores.n, **described}


def zero_shot_by_modality(exp: Experiment, views: Mapping, split: str = TUNING_SPLIT) -> dict[str, dict]:
    """:func:`modality_zero_shot` (expert prompts) for every modality of ``views``."""
    return {m: modality_zero_shot(exp, m, view, split=split) for m, view in views.items()}


def describe_zero_shot(result: Mapping) -> str:
    """One line for a stage's log: '0.512 on 60 val studies (expert prompts, renormalised
    prototypes; chance 0.167)'."""
    if not result["n"]:
        return f"not measured: {result.get('not_measured') or 'no ' + result['split'] + ' studies'}"
    return (f"{result['accuracy']:.3f} on {result['n']} {result['split']} studies ({result['prompts']} prompts, "
            f"{result['prototypes']} prototypes; chance {result['chance']:.3f})")


@torch.no_grad()
def choose_prototype_rule(exp: Experiment, variants: Mapping[str, Mapping]) -> dict:
    """Choose the prototype rule on validation, for every variant alike.

    For each variant and rule: mean expert-prompt zero-shot accuracy over the modalities, on
    their validation splits. The chosen rule has the best mean over the variants (ties: the
    order of PROTOTYPE_RULES). Returns {"chosen", "validation": {variant: {rule: accuracy}},
    "best_per_variant", "agree"} (agree: every variant's own best is the chosen rule); without
    any single-label validation study, {"chosen": STAGE_PROTOTYPE_RULE, "default": True, ...}.
    """
    table: dict[str, dict[str, float]] = {}
    for variant, views in variants.items():
        per_rule: dict[str, list[float]] = {name: [] for name in PROTOTYPE_RULES}
        for m, view in views.items():
            if not has_rows(exp, m, TUNING_SPLIT) or not has_findings(exp, m):
                continue
            studies = exp.studies(m, TUNING_SPLIT)
            classes = modality_classes(exp, m)
            keep, _ = single_label_targets(studies.labels, classes)
            if len(keep) == 0:
                continue
            view.eval()
            image_emb = embed_view_images(exp, view, studies.images)
            for name, rule in PROTOTYPE_RULES.items():
                scores = zero_shot_scores(view, studies, classes, class_prompts(exp, m, classes, "expert", rule),
                                          rule, image_emb)
                per_rule[name].append(scores.metrics()["accuracy"])
        if any(per_rule.values()):
            table[variant] = {name: float(np.mean(values)) for name, values in per_rule.items()}
    if not table:
        # Nothing to choose on: the default rule, said so in the report (as the chaining profile
        # does without paired validation rows), rather than failing a run after its training.
        return {"chosen": STAGE_PROTOTYPE_RULE, "default": True, "validation": {}, "agree": True,
                "reason": "no modality has single-label validation studies"}
    overall = {name: float(np.mean([t[name] for t in table.values()])) for name in PROTOTYPE_RULES}
    chosen = max(PROTOTYPE_RULES, key=lambda name: (overall[name], -list(PROTOTYPE_RULES).index(name)))
    best = {v: max(PROTOTYPE_RULES, key=lambda name: (t[name], -list(PROTOTYPE_RULES).index(name)))
            for v, t in table.items()}
    return {"chosen": chosen, "validation": table, "validation_mean": overall, "best_per_variant": best,
            "agree": all(b == chosen for b in best.values())}


def heldout_texts(exp: Experiment, modalities: Sequence[str], per_modality: int = 32) -> list[str]:
    """Validation texts from every corpus (never trained on) for the text-agreement metric."""
    texts = []
    for m in modalities:
        texts.extend(exp.manifest(m).split(TUNING_SPLIT).texts()[:per_modality])
    return texts


def reports_cut_at_the_limit(tokenize, texts: Sequence[str], batch_size: int = 256) -> tuple[int, int]:
    """(how many of ``texts`` reach the token limit of ``tokenize``, that limit). A text at the limit
    is cut there (or ends exactly on it): its end is not read. The limit is what a very long text
    tokenizes to, so this works for any model's ``tokenize`` (every one returns an attention mask)."""
    limit = int(tokenize(["report " * 2000])["attention_mask"].sum())
    cut = 0
    for start in range(0, len(texts), batch_size):
        mask = tokenize(list(texts[start:start + batch_size]))["attention_mask"]
        cut += int((mask.sum(1) >= limit).sum())
    return cut, limit


# --- the paired set and its concepts ------------------------------------------------------------
def retrieval_pairs(exp: Experiment) -> list[tuple[str, str]]:
    """The (query, gallery) pairs to score: ``eval.retrieval_pairs``, else every ordered pair of
    the modalities with a paired manifest."""
    if exp.cfg.eval.retrieval_pairs is not None:
        return [tuple(pair) for pair in exp.cfg.eval.retrieval_pairs]
    return list(permutations(exp.cfg.paired_manifests, 2))


def paired_studies(exp: Experiment, modality: str, split: str):
    """The modality's paired studies of one split; a clear error when the manifest has none."""
    manifest = exp.paired_manifest(modality)
    if not (manifest.table["split"] == split).any():
        raise DataError(manifest.source, f"no '{split}' rows in this paired manifest; the paired set needs "
                                         f"'val' rows (for tuning) and 'test' rows (for the report), with "
                                         f"disjoint patients")
    return exp.studies(modality, split, paired=True)


def check_paired_set(exp: Experiment) -> None:
    """Fail early, naming the files, when the paired set cannot pair anything: a retrieval pair
    whose two manifests share no ``patient_id`` on a split (a query without its patient in the
    gallery can only miss, so every Recall@K would be a silent 0), or rows without a patient id."""
    pairs = retrieval_pairs(exp) if exp.cfg.paired_manifests else []
    for m in {m for pair in pairs for m in pair}:
        manifest = exp.paired_manifest(m)
        empty = (manifest.table["patient_id"].str.strip() == "").to_numpy().nonzero()[0]
        if len(empty):
            raise DataError(manifest.source, "no patient_id (a paired manifest pairs studies by patient_id)",
                            row=manifest.file_row(int(empty[0])), column="patient_id")
    _check_val_and_test_patients_differ(exp)
    for split in ("val", "test"):
        for query, gallery in pairs:
            # (rows without an id were refused above)
            ids = {m: patient_ids(exp.paired_manifest(m), split) for m in (query, gallery)}
            if ids[query] and ids[gallery] and not ids[query] & ids[gallery]:
                raise DataError(exp.paired_manifest(query).source,
                                f"no patient_id of its '{split}' rows is in the {gallery} paired manifest's "
                                f"'{split}' rows ({exp.paired_manifest(gallery).source}): the paired set pairs "
                                "studies of one patient by equal patient_id" + _id_spelling_hint(ids[query],
                                                                                                 ids[gallery]))


def _id_spelling_hint(a: set[str], b: set[str]) -> str:
    """Why two sets of ids that should meet do not, when it is their spelling."""
    pair = id_spelled_otherwise(a, b)
    if pair is None:
        return f" (e.g. '{min(a)}' here, '{min(b)}' there)"
    return (f"; they differ only in spelling, e.g. '{pair[0]}' here and '{pair[1]}' there (leading zeros, case "
            "or spaces): write the ids one way in both")


def id_spelled_otherwise(a: set[str], b: set[str]) -> tuple[str, str] | None:
    """An id of ``a`` that is in ``b`` only in another spelling, with that spelling: one export
    wrote '00123' and the other 123 (a number column loses its zeros), or 'P12' and 'p12'."""
    loose = lambda i: i.strip().casefold().lstrip("0")  # noqa: E731
    spelled = {loose(i): i for i in b}
    return next(((i, spelled[loose(i)]) for i in sorted(a) if loose(i) in spelled and i not in b), None)


def _check_val_and_test_patients_differ(exp: Experiment) -> None:
    """Choices made on the paired val patients must not see a test patient: a patient id on both
    splits, in any of the paired manifests, is refused with the files and an example."""
    seen: dict[str, dict[str, str]] = {"val": {}, "test": {}}  # split -> patient id -> the manifest
    for m in exp.cfg.paired_manifests:
        manifest = exp.paired_manifest(m)
        for split in seen:
            for patient in sorted(patient_ids(manifest, split)):
                seen[split].setdefault(patient, str(manifest.source))
    shared = sorted(set(seen["val"]) & set(seen["test"]))
    if shared:
        example = shared[0]
        raise DataError(seen["test"][example], f"{len(shared)} patient(s) of the paired set are on both the 'val' "
                                               f"and the 'test' split (e.g. '{example}', 'val' in "
                                               f"{seen['val'][example]}): choices made on validation would see "
                                               "test patients; give each patient one split")


def patient_ids(manifest, split: str) -> set[str]:
    """The patient ids of a manifest's ``split`` rows (rows without an id left out)."""
    table = manifest.table
    return set(table.loc[table["split"] == split, "patient_id"]) - {""}


def paired_has_split(exp: Experiment, split: str) -> bool:
    """Whether every paired manifest has rows of ``split`` (older paired sets are test-only)."""
    return all((exp.paired_manifest(m).table["split"] == split).any() for m in exp.cfg.paired_manifests)


def concepts_from_column(exp: Experiment) -> bool:
    """Whether every paired manifest has a ``concepts`` column (else concepts come from labels)."""
    return all("concepts" in exp.paired_manifest(m).table for m in exp.cfg.paired_manifests)


def study_concepts(exp: Experiment, modality: str, split: str, studies) -> list[frozenset]:
    """Each paired study's cross-modal concepts: its ``concepts`` cell, or, when the paired
    manifests have no such column, its labels (a pair then compares the labels both of its
    modalities use, see pair_query_scores)."""
    table = exp.paired_manifest(modality).split(split).table
    column = "concepts" if concepts_from_column(exp) else "labels"
    prompt_set = prompt_set_for(exp, modality)
    return [frozenset(concept_key(prompt_set, c) for c in parse_labels(table.at[row - 1, column]))
            for row in studies.rows]


def manifest_concepts(exp: Experiment, modality: str, split: str) -> frozenset[str]:
    """Every concept the modality's paired manifest names on ``split`` (as :func:`concept_key`),
    read from the table alone, without decoding a study (for ``m3bind config``)."""
    table = exp.paired_manifest(modality).table
    column = "concepts" if concepts_from_column(exp) else "labels"
    prompt_set = prompt_set_for(exp, modality)
    return frozenset(concept_key(prompt_set, c) for raw in table.loc[table["split"] == split, column]
                     for c in parse_labels(raw))


def concept_key(prompt_set, name: str) -> str:
    """A concept's name as two modalities' manifests can agree on it: the modality's prompt set's
    own name for it when the set knows it (ChestX-ray14's "Effusion" and CT-RATE's "Pleural
    effusion" are both "pleural effusion"), in its spelling-free form."""
    return label_key(prompt_set.find(name) or name)


def concept_names(exp: Experiment, split: str = TUNING_SPLIT) -> list[str]:
    """The cross-modal concepts of the paired set (read from the tuning split by default), for
    the chaining baseline's shared prompt list: concepts two paired modalities can both show."""
    visible = {m: frozenset().union(*study_concepts(exp, m, split, paired_studies(exp, m, split)))
               for m in exp.cfg.paired_manifests}
    shared = {c for a, b in permutations(visible, 2) for c in visible[a] & visible[b]}
    return sorted(shared)


@torch.no_grad()
def paired_embeddings(exp: Experiment, views: Mapping, split: str) -> dict:
    """{modality: (image embeddings, patient ids, concept sets)} on one split of the paired set,
    for each modality that has a view and a paired manifest."""
    cache = {}
    for m, view in views.items():
        if m not in exp.cfg.paired_manifests:
            continue
        if split == TUNING_SPLIT and not paired_has_split(exp, split):
            continue  # a test-only paired set: stage diagnostics show no retrieval rather than read test
        studies = paired_studies(exp, m, split)
        cache[m] = (embed_view_images(exp, view, studies.images), studies.patient_ids,
                    study_concepts(exp, m, split, studies))
    return cache


@torch.no_grad()
def modality_centres(exp: Experiment, views: Mapping, modalities) -> dict[str, torch.Tensor]:
    """The mean unit-length embedding of each modality's training studies (at most
    :data:`CENTRE_STUDIES`, evenly spaced) in the shared space of ``views``: what every study of
    that modality has in common, whatever its findings."""
    centres = {}
    for m in sorted(modalities):
        count = len(exp.studies(m, "train"))
        if count == 0:
            raise DataError(exp.manifest(m).source, f"{m}: no 'train' rows, so no mean embedding to centre its "
                                                    "queries on; set eval.retrieval_similarity: cosine")
        rows = np.unique(np.linspace(0, count - 1, min(count, CENTRE_STUDIES)).round().astype(int))
        embeddings = embed_view_images(exp, views[m], exp.study_subset(m, "train", rows))
        centres[m] = torch.nn.functional.normalize(embeddings.float(), dim=-1).mean(0)
    return centres


def pair_query_scores(exp: Experiment, cache: Mapping, pairs: Sequence[tuple[str, str]],
                      centres: Mapping[str, torch.Tensor] | None = None) -> dict[str, QueryScores]:
    """Per-query retrieval values for each (query, gallery) pair in ``cache``; with ``centres``
    (see :func:`modality_centres`), each query's embedding minus its modality's centre."""
    # A concept counts for a pair only if both modalities can show it (cardiomegaly for X-ray and
    # ECG, but not an effusion that only X-ray sees).
    visible = {m: frozenset().union(*concepts) for m, (_, _, concepts) in cache.items()}
    results = {}
    for query, gallery in pairs:
        if query in cache and gallery in cache:
            q, g = cache[query], cache[gallery]
            shared = visible[query] & visible[gallery]
            queries = q[0] if centres is None else q[0] - centres[query].to(q[0])
            results[f"{query}->{gallery}"] = embedding_query_scores(
                queries, g[0], q[1], g[1], [c & shared for c in q[2]], [c & shared for c in g[2]], exp.cfg.eval.recall_at)
    return results


def _wanted(pairs: Sequence[tuple[str, str]], views: Mapping) -> set[str]:
    return {m for pair in pairs for m in pair} & set(views)


def paired_query_scores(exp: Experiment, views: Mapping, pairs: Sequence[tuple[str, str]],
                        split: str, similarity: str = "cosine",
                        centres: Mapping[str, torch.Tensor] | None = None) -> dict[str, QueryScores]:
    """Image-image retrieval on one split of the paired set, in the shared space of ``views``,
    ranked by one of :data:`RETRIEVAL_SIMILARITIES`; 'centred' uses ``centres`` when given (a
    saved model's own), else :func:`modality_centres`."""
    if similarity not in RETRIEVAL_SIMILARITIES:
        raise ValueError(f"unknown retrieval similarity '{similarity}'; known: {', '.join(RETRIEVAL_SIMILARITIES)}")
    for view in views.values():
        view.eval()
    wanted = _wanted(pairs, views)
    if similarity != "centred":
        centres = None
    elif centres is None:
        centres = modality_centres(exp, views, wanted)
    return pair_query_scores(exp, paired_embeddings(exp, {m: views[m] for m in wanted}, split), pairs, centres)


def choose_retrieval_similarity(exp: Experiment, variants: Mapping[str, Mapping],
                                pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, dict],
                                                                           dict[str, dict[str, torch.Tensor]]]:
    """({variant: choice}, {variant: centres}) for the variants ranked in the shared space
    (control, bound, m3bind). The choice is the similarity with the best mean concept AUC over the
    pairs on the paired validation set (ties: cosine). Each variant gets its own choice, so the
    lambda = 0 control is tuned as much as the bound model. ``eval.retrieval_similarity`` other
    than 'auto' fixes it for all; a paired set without validation rows keeps cosine and says so
    (``validated``: false). The centres (:func:`modality_centres` of the pairs' modalities) are
    those the validation comparison computed, for the test tables to reuse."""
    configured = exp.cfg.eval.retrieval_similarity
    default = next(iter(RETRIEVAL_SIMILARITIES))
    choices, centres = {}, {}
    for variant in ("control", "bound", "m3bind"):
        if variant not in variants:
            continue
        if configured != "auto":
            choices[variant] = {"chosen": configured, "configured": True}
        elif not pairs or not paired_has_split(exp, TUNING_SPLIT):
            choices[variant] = {"chosen": default, "validation_concept_auc": None, "validated": False}
        else:
            views = variants[variant]
            centres[variant] = modality_centres(exp, views, _wanted(pairs, views))
            table = {similarity: mean_concept_auc(paired_query_scores(exp, views, pairs, TUNING_SPLIT, similarity,
                                                                      centres[variant]))
                     for similarity in RETRIEVAL_SIMILARITIES}
            choices[variant] = {"chosen": best_of(table), "validation_concept_auc": table, "validated": True}
    return choices, centres


def choose_model_similarity(exp: Experiment, model, pairs: Sequence[tuple[str, str]], log=print) -> dict:
    """Choose how a final :class:`~m3bind.models.bound.M3Bind` ranks image queries, as the report
    chooses for its variants (:func:`choose_retrieval_similarity` on the paired validation set),
    and record it in ``model`` with every modality's centre, for search to rank as the report
    measured. Keeps cosine, and says why, when a modality has no training rows to centre on."""
    from contextlib import nullcontext

    model.eval()
    views = {m: model.view(m) for m in model.modalities}
    # Both similarities rank the same paired studies' embeddings: embed them once.
    with exp.sharing_image_embeddings() if exp.image_memo is None else nullcontext():
        choices, computed = choose_retrieval_similarity(exp, {"m3bind": views}, pairs)
        choice, centres = choices["m3bind"], None
        if choice["chosen"] == "centred":
            missing = [m for m in model.modalities if m not in exp.cfg.modalities or not has_rows(exp, m, "train")]
            if missing:
                log(f"retrieval similarity: cosine, not the validated 'centred': {', '.join(missing)} has no "
                    "training rows in this config to centre its queries on")
                choice = {**choice, "chosen": "cosine", "reason": f"no training rows for {', '.join(missing)}"}
            else:
                # The validation comparison centred the pairs' modalities; search needs every one.
                centres = dict(computed.get("m3bind", {}))
                centres.update(modality_centres(exp, views, set(model.modalities) - set(centres)))
    model.set_retrieval_similarity(choice["chosen"], centres, choice.get("validation_concept_auc"))
    return choice


def paired_retrieval(exp: Experiment, views: Mapping, pairs: Sequence[tuple[str, str]],
                     split: str = TUNING_SPLIT) -> dict:
    """:func:`paired_query_scores` as reported numbers."""
    return {pair: scores.summary() for pair, scores in paired_query_scores(exp, views, pairs, split).items()}


# --- baselines -----------------------------------------------------------------------------------
@torch.no_grad()
def random_head_scores(exp: Experiment, unbound: Mapping, pairs: Sequence[tuple[str, str]], split: str,
                       draws: int = RANDOM_HEAD_DRAWS) -> tuple[dict[str, QueryScores], dict[str, float | None]]:
    """Chance level: retrieval between the unbound models through random orthogonal heads.

    Before binding the spaces are unrelated: comparing them needs some map into one space, and
    with random orthogonal heads every score is a random variable whose mean is chance (flipping
    one head's sign turns a concept AUC a into 1 - a). One draw can land far from it either way,
    so this is the mean over ``draws`` draws (per query), with the spread of the concept AUC
    over the draws. It says what chance looks like on this set, not what a user could do
    without binding (see chaining_scores and the lambda = 0 control for that).
    """
    from m3bind.models.heads import BindingHead

    wanted = _wanted(pairs, unbound)
    for m in wanted:
        unbound[m].eval()
    native = paired_embeddings(exp, {m: native_view(unbound[m].model) for m in wanted}, split)
    runs = []
    for draw in range(draws):
        cache = {}
        for m, (emb, ids, concepts) in native.items():
            # draw 0 uses the unbound variant's own heads (seed + position in the config)
            seed = exp.cfg.seed + list(unbound).index(m) + 1000 * draw
            # drawn on the CPU (a CPU generator: the same heads on any machine), applied on the device
            head = BindingHead(emb.shape[1], exp.cfg.shared_dim, torch.Generator().manual_seed(seed)).to(exp.device)
            cache[m] = (head(emb.to(exp.device)).to(emb.device), ids, concepts)
        runs.append(pair_query_scores(exp, cache, pairs))
    means = {pair: mean_query_scores([run[pair] for run in runs]) for pair in runs[0]}
    spread = {}
    for pair in means:
        aucs = [run[pair].summary()["concept_auc"] for run in runs]
        spread[pair] = float(np.std(aucs)) if all(a is not None for a in aucs) else None
    return means, spread


def random_head_retrieval(exp: Experiment, unbound: Mapping, pairs: Sequence[tuple[str, str]],
                          split: str = TUNING_SPLIT, draws: int = RANDOM_HEAD_DRAWS) -> dict:
    """:func:`random_head_scores` as reported numbers, with ``head_draws`` and ``concept_auc_std``."""
    means, spread = random_head_scores(exp, unbound, pairs, split, draws)
    return {pair: {**scores.summary(), "head_draws": draws, "concept_auc_std": spread[pair]}
            for pair, scores in means.items()}


CHAINING_PROFILES = ("standardised", "raw")


def chaining_profiles(image_emb: torch.Tensor, concept_emb: torch.Tensor, profile: str) -> torch.Tensor:
    """Unit-length concept score profiles of studies: each study's similarity to every concept
    prompt (one modality's own image and text encoders), each concept's scores standardised
    over the studies first when ``profile`` is 'standardised' (a model's similarities share a
    large common offset that would otherwise dominate the cosine)."""
    scores = image_emb.float() @ concept_emb.float().T
    if profile == "standardised":
        scores = (scores - scores.mean(0)) / scores.std(0).clamp(min=1e-8)
    elif profile != "raw":
        raise ValueError(f"unknown chaining profile '{profile}'; choose one of {', '.join(CHAINING_PROFILES)}")
    return torch.nn.functional.normalize(scores, dim=-1)


@torch.no_grad()
def chaining_scores(exp: Experiment, unbound: Mapping, pairs: Sequence[tuple[str, str]], split: str,
                    profile: str, concepts: Sequence[str]) -> dict[str, QueryScores]:
    """Zero-shot concept chaining, what a user can do without binding: each modality's own
    unbound model scores its studies against one shared list of concept prompts (``concepts``
    in the modality's prompt template), and studies of two modalities are compared by the cosine
    of their concept score profiles (:func:`chaining_profiles`)."""
    from m3bind.eval.prompts import class_phrase

    if not concepts:
        return {}  # no concept two paired modalities share: nothing to chain through
    cache = {}
    for m in _wanted(pairs, unbound):
        if m not in exp.cfg.paired_manifests:
            continue
        view = native_view(unbound[m].model)
        view.eval()
        studies = paired_studies(exp, m, split)
        template = prompt_set_for(exp, m).template
        concept_emb = embed_texts(view.encode_texts, [template.format(class_phrase(c)) for c in concepts])
        profiles = chaining_profiles(embed_view_images(exp, view, studies.images), concept_emb, profile)
        cache[m] = (profiles, studies.patient_ids, study_concepts(exp, m, split, studies))
    return pair_query_scores(exp, cache, pairs)


DEFAULT_CHAINING_PROFILE = "standardised"


def choose_chaining_profile(exp: Experiment, unbound: Mapping, pairs: Sequence[tuple[str, str]]) -> dict:
    """Choose the chaining profile on validation: the best mean concept AUC over the pairs. A
    paired set without validation rows gets DEFAULT_CHAINING_PROFILE and the concept names of
    its test rows (names only), and says so (``validated``: false)."""
    if not paired_has_split(exp, TUNING_SPLIT):
        return {"chosen": DEFAULT_CHAINING_PROFILE, "validation_concept_auc": None, "validated": False,
                "concepts": concept_names(exp, REPORT_SPLIT)}
    concepts = concept_names(exp)
    table = {profile: mean_concept_auc(chaining_scores(exp, unbound, pairs, TUNING_SPLIT, profile, concepts))
             for profile in CHAINING_PROFILES}
    return {"chosen": best_of(table), "validation_concept_auc": table, "validated": True, "concepts": concepts}


def mean_concept_auc(scores: Mapping[str, QueryScores]) -> float | None:
    """The mean concept AUC over the pairs that have one (None when none has)."""
    aucs = [a for a in (s.summary()["concept_auc"] for s in scores.values()) if a is not None]
    return float(np.mean(aucs)) if aucs else None


def best_of(table: Mapping[str, float | None]) -> str:
    """The key with the highest value; the first of equal values (so the default, listed first,
    wins ties), and a None counts as lowest."""
    return max(table, key=lambda key: -1.0 if table[key] is None else table[key])

