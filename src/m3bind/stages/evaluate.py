"""The ``evaluate`` stage: the paper's experiments as one call, every table comparing the
original unbound models, baselines a user could run without binding, the bound models and the
final M3Bind model.

Variants (in table order):
- ``unbound``: the pretrained / published models (the paper's baselines), each with its own text
  encoder, mapped to the shared width by the untrained semi-orthogonal heads binding starts from
  (an isometry, so their own zero-shot and few-shot numbers are exactly the original models').
- ``random_heads`` (retrieval only): the unbound models through random orthogonal heads, the mean
  of several draws: what chance looks like on the paired set.
- ``chaining`` (retrieval only): zero-shot concept chaining, each unbound model scoring its studies
  against one shared list of concept prompts, studies compared by their score profiles.
- ``control``: binding with lambda = 0 (same LoRA, heads and steps; CLIP terms only), when
  ``eval.lambda0_control``.
- ``bound``: after binding, each modality with its own bound text encoder.
- ``m3bind``: the final model: bound image encoders + the SESKD student text encoder.

Choices (the prototype rule, the chaining profile) are made on the validation splits first;
the test splits are then read once for the reported numbers, each with a bootstrap interval,
and the differences the README claims with paired bootstrap intervals.
"""
from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from m3bind.devices import on_main_process
from m3bind.errors import ConfigError
from m3bind.eval.bootstrap import Bootstrap
from m3bind.eval.fewshot import linear_probe, sample_shots
from m3bind.eval.metrics import multilabel_metrics
from m3bind.eval.prompts import (expert_prompts, missing_classes, naive_prompts, presence_pairs,
                                 presence_probabilities, sampled_prompts)
from m3bind.eval.protocol import (DEFAULT_CHAINING_PROFILE, RANDOM_HEAD_DRAWS, REPORT_SPLIT, chaining_scores,
                                  check_paired_set,
                                  choose_chaining_profile, choose_prototype_rule, choose_retrieval_similarity,
                                  concepts_from_column,
                                  configured_rule, embed_texts, embed_view_images, has_findings, has_rows,
                                  patient_ids,
                                  NO_FINDINGS, heldout_texts, modality_classes,
                                  paired_has_split, paired_query_scores, prompt_set_for, prompt_set_origin,
                                  id_spelled_otherwise, random_head_scores,
                                  retrieval_pairs, zero_shot_scores)
from m3bind.eval.retrieval import QueryScores, embedding_query_scores
from m3bind.eval.zeroshot import PROTOTYPE_RULES, PrototypeRule, ZeroShotScores, single_label_targets
from m3bind.experiment import Experiment, keeps_sentence_vectors
from m3bind.stages.artifacts import bind_dir, load_bound, model_dir
from m3bind.timing import StageTimer

SAMPLED_PROMPTS = 10  # prompts per class for the sampled (CheXpert 5x200 style) protocol

VARIANTS = {
    "unbound": "pretrained models, each with its own text encoder (the paper's baselines)",
    "random_heads": f"chance level: the unbound models through random orthogonal heads, mean of "
                    f"{RANDOM_HEAD_DRAWS} draws (retrieval only)",
    "chaining": "baseline without binding: each unbound model scores its studies against one shared list of concept "
                "prompts; studies compared by the cosine of their score profiles (retrieval only)",
    "control": "lambda = 0 control: the same LoRA, heads and binding steps with the CLIP terms only",
    "bound": "after binding, each modality with its own bound text encoder",
    "m3bind": "final model: bound image encoders + the SESKD student text encoder",
}
BASELINES = ("random_heads", "chaining", "control")


class ModelViews(dict):
    """{modality: encoder view} of one saved final model, which it keeps: the model's recorded
    retrieval setting (:func:`_final_model_similarity`) is read from it, not from its files again."""

    def __init__(self, model):
        super().__init__({m: model.view(m) for m in model.modalities})
        self.model = model


def load_variants(exp: Experiment, names: Sequence[str]) -> dict[str, dict]:
    """{variant: {modality: encoder view}} for the model variants whose files exist."""
    from m3bind.models.binding import BoundModality
    from m3bind.models.bound import M3Bind
    from m3bind.stages.control import control_experiment

    unbound = {}
    for index, m in enumerate(names):
        unbound[m] = BoundModality(exp.load_unbound(m), exp.cfg.shared_dim, seed=exp.cfg.seed + index).to(exp.device)
    variants = {"unbound": unbound}
    modules = list(unbound.values())
    control = control_experiment(exp)
    if exp.cfg.eval.lambda0_control and (bind_dir(control) / "model" / "bound.json").exists():
        variants["control"] = load_bound(control)
        modules += variants["control"].values()
    if (bind_dir(exp) / "model" / "bound.json").exists():
        variants["bound"] = load_bound(exp)
        modules += variants["bound"].values()
    if (model_dir(exp) / "m3bind.json").exists():
        final = M3Bind.from_pretrained(model_dir(exp)).to(exp.device)
        variants["m3bind"] = ModelViews(final)
        modules.append(final)
    # One frozen sentence encoder (and cache) for every variant and stage: they embed the same texts.
    exp.sentence_encoder.adopt(modules)
    for views in variants.values():
        for view in views.values():
            view.eval()
    return variants


class TestEmbeddings:
    """Test-split image embeddings per (variant, modality), computed once and shared by the tables."""

    def __init__(self, exp: Experiment):
        self.exp = exp
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def __call__(self, variant: str, modality: str, view) -> torch.Tensor:
        key = (variant, modality)
        if key not in self._cache:
            self._cache[key] = embed_view_images(self.exp, view, self.exp.studies(modality, REPORT_SPLIT).images)
        return self._cache[key]


def _with_intervals(scores: ZeroShotScores | None, bootstrap: Bootstrap) -> dict | None:
    return None if scores is None else {**scores.metrics(), **scores.intervals(bootstrap)}


@torch.no_grad()
def zero_shot_tables(exp: Experiment, modality: str, view, image_emb: torch.Tensor, rule: PrototypeRule,
                     bootstrap: Bootstrap) -> tuple[dict, dict[str, ZeroShotScores | None]]:
    """The zero-shot entry of one modality and variant on the test split (naive / expert with the
    chosen rule, expert under every rule, sampled, presence), and the per-study naive and expert
    scores (for the paired differences)."""
    studies = exp.studies(modality, REPORT_SPLIT)
    classes = modality_classes(exp, modality)
    prompt_set = prompt_set_for(exp, modality)
    by_rule = {name: zero_shot_scores(view, studies, classes, expert_prompts(prompt_set, classes, class_name=r.class_name),
                                      r, image_emb) for name, r in PROTOTYPE_RULES.items()}
    naive = zero_shot_scores(view, studies, classes, naive_prompts(prompt_set, classes), rule, image_emb)
    # CheXpert 5x200 / GLoRIA: several prompts sampled per class, their embeddings averaged.
    sampled = zero_shot_scores(view, studies, classes, sampled_prompts(prompt_set, classes, n=SAMPLED_PROMPTS,
                                                                       seed=exp.cfg.seed, use_template=True),
                               rule, image_emb)
    entry = {"naive": _with_intervals(naive, bootstrap), "expert": _with_intervals(by_rule[rule.name], bootstrap),
             "sampled": None if sampled is None else sampled.metrics(),
             "expert_by_rule": {name: None if s is None else s.metrics() for name, s in by_rule.items()}}
    findings = classes[1:]
    pairs = presence_pairs(prompt_set, findings)
    pos = embed_texts(view.encode_texts, [pairs[f][0] for f in findings])
    neg = embed_texts(view.encode_texts, [pairs[f][1] for f in findings])
    probs = presence_probabilities(image_emb, pos, neg, float(view.logit_scale())).numpy()
    truth = np.array([[f in labels for f in findings] for labels in studies.labels], dtype=int)
    entry["presence"] = multilabel_metrics(truth, probs, classes=findings)
    return entry, {"naive": naive, "expert": by_rule[rule.name]}


def _probe_classes_ok(exp: Experiment, modality: str) -> bool:
    _, train_y = single_label_targets(exp.studies(modality, "train").labels, modality_classes(exp, modality))
    return len(np.unique(train_y)) >= 2


@torch.no_grad()
def few_shot_table(exp: Experiment, modality: str, view, test_image_emb: torch.Tensor) -> dict:
    classes = modality_classes(exp, modality)
    train, test = exp.studies(modality, "train"), exp.studies(modality, REPORT_SPLIT)
    train_keep, train_y = single_label_targets(train.labels, classes)
    test_keep, test_y = single_label_targets(test.labels, classes)
    # The probes only ever see the sampled shots, so only those training studies are embedded
    # (the other rows stay zero and are never read): the same numbers, a fraction of the work.
    needed = sorted({int(i) for k in exp.cfg.eval.shots for seed in exp.cfg.eval.seeds
                     for i in sample_shots(train_y, k, seed, len(classes))[0]})
    train_emb = np.zeros((len(train_keep), test_image_emb.shape[1]), dtype=np.float32)
    shots = exp.study_subset(modality, "train", train_keep[needed])  # one decode for every variant
    train_emb[needed] = embed_view_images(exp, view, shots).numpy()
    test_emb = test_image_emb[torch.as_tensor(test_keep)].numpy()
    result = linear_probe(train_emb, train_y, test_emb, test_y, exp.cfg.eval.shots, exp.cfg.eval.seeds, classes)
    return {str(k): v for k, v in result.items()}


@torch.no_grad()
def text_to_image(exp: Experiment, modality: str, view, image_emb: torch.Tensor) -> dict:
    """Each test report retrieves its own study among the test studies (concept = finding set)."""
    studies = exp.studies(modality, REPORT_SPLIT)
    text_emb = embed_texts(view.encode_texts, studies.texts)
    ids = [str(r) for r in studies.rows]
    findings = [frozenset(labels) for labels in studies.labels]
    return embedding_query_scores(text_emb, image_emb, ids, ids, findings, findings, exp.cfg.eval.recall_at).summary()


def embedding_sample(exp: Experiment, views: dict, variant: str, embeddings: TestEmbeddings) -> dict:
    """Test-split image embeddings of every modality, with modality and finding names (for the map)."""
    embs, modality, concept = [], [], []
    for m, view in views.items():
        studies = exp.studies(m, REPORT_SPLIT)
        embs.append(embeddings(variant, m, view).numpy())
        modality += [m] * len(studies)
        concept += ["|".join(sorted(labels)) or "normal" for labels in studies.labels]
    return {"emb": np.concatenate(embs), "modality": modality, "concept": concept}


def _stringify_k(scores: dict) -> dict:
    """JSON keys for K are strings."""
    return {key: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
            for key, value in scores.items()}


def _retrieval_entry(scores: QueryScores, bootstrap: Bootstrap, **extra) -> dict:
    return _stringify_k({**scores.summary(), **scores.intervals(bootstrap), **extra})


def retrieval_query_scores(exp: Experiment, variants: Mapping[str, Mapping], pairs: Sequence[tuple[str, str]],
                           chaining_profile: str, concepts: Sequence[str],
                           similarity: Mapping[str, dict] | None = None,
                           centres: Mapping[str, Mapping] | None = None) -> tuple[dict[str, dict[str, QueryScores]],
                                                                                  dict[str, dict]]:
    """{variant: {pair: QueryScores}} on the paired test set for every retrieval variant, and the
    random-head extras (draw count and concept-AUC spread per pair). ``similarity``: each trained
    variant's choice (:func:`choose_retrieval_similarity`; default cosine); ``centres``: a
    variant's centres as its choice computed them, or the saved final model's own; else computed."""
    unbound = variants["unbound"]
    heads, spread = random_head_scores(exp, unbound, pairs, REPORT_SPLIT)
    scores = {"random_heads": heads,
              "chaining": chaining_scores(exp, unbound, pairs, REPORT_SPLIT, chaining_profile, concepts)}
    for v in ("control", "bound", "m3bind"):
        if v in variants:
            chosen = (similarity or {}).get(v, {}).get("chosen", "cosine")
            scores[v] = paired_query_scores(exp, variants[v], pairs, REPORT_SPLIT, chosen, (centres or {}).get(v))
    extras = {pair: {"head_draws": RANDOM_HEAD_DRAWS, "concept_auc_std": spread[pair]} for pair in heads}
    return scores, extras


def _difference(claim: str, section: str, where: str, metric: str, a: str, b: str, values_a: np.ndarray,
                values_b: np.ndarray, point: float, bootstrap: Bootstrap) -> dict:
    interval = bootstrap.interval(values_a - values_b)
    return {"claim": claim, "section": section, "where": where, "metric": metric, "a": a, "b": b,
            "difference": point, "ci": interval,
            "excludes_zero": None if interval is None else bool(interval[0] > 0 or interval[1] < 0)}


def retrieval_differences(scores: Mapping[str, Mapping[str, QueryScores]], bootstrap: Bootstrap) -> list[dict]:
    """Paired bootstrap intervals (same resampled queries) of concept AUC differences: bound
    minus the best baseline (the highest test point estimate of the baselines, the hardest
    comparison), and final minus bound."""
    out = []
    for pair, bound in scores.get("bound", {}).items():
        counts = bootstrap.counts(bound.queries)
        bound_auc = bound.summary()["concept_auc"]
        if bound_auc is None:
            continue
        resampled = {v: scores[v][pair].resampled(counts)["concept_auc"] for v in scores if pair in scores[v]}
        points = {v: scores[v][pair].summary()["concept_auc"] for v in BASELINES if v in scores and pair in scores[v]}
        points = {v: p for v, p in points.items() if p is not None}
        if points:
            best = max(points, key=points.get)
            out.append(_difference("bound - best baseline", "retrieval", pair, "concept_auc", "bound", best,
                                   resampled["bound"], resampled[best], bound_auc - points[best], bootstrap))
        if "m3bind" in resampled:
            final_auc = scores["m3bind"][pair].summary()["concept_auc"]
            out.append(_difference("final - bound", "retrieval", pair, "concept_auc", "m3bind", "bound",
                                   resampled["m3bind"], resampled["bound"], final_auc - bound_auc, bootstrap))
    return out


ZERO_SHOT_CLAIMS = (("final - bound", "m3bind", "bound"), ("bound - unbound", "bound", "unbound"),
                    ("bound - control", "bound", "control"))


def zero_shot_differences(raw: Mapping[str, Mapping[str, Mapping[str, ZeroShotScores | None]]],
                          bootstrap: Bootstrap, style: str = "expert") -> list[dict]:
    """Paired bootstrap intervals (same resampled test studies) of zero-shot accuracy and AUC
    differences per modality: final minus bound, bound minus unbound, bound minus control."""
    out = []
    for modality, by_variant in raw.items():
        for claim, a, b in ZERO_SHOT_CLAIMS:
            first, second = by_variant.get(a, {}).get(style), by_variant.get(b, {}).get(style)
            if first is None or second is None:
                continue
            counts = bootstrap.counts(first.n)
            values_a, values_b = first.resampled(counts), second.resampled(counts)
            metrics_a, metrics_b = first.metrics(), second.metrics()
            for metric in ("accuracy", "auc_macro"):
                if metrics_a[metric] is None or metrics_b[metric] is None:
                    continue
                out.append(_difference(claim, f"zero_shot ({style})", modality, metric, a, b, values_a[metric],
                                       values_b[metric], metrics_a[metric] - metrics_b[metric], bootstrap))
    return out


def _prompt_notes(exp: Experiment, names: Sequence[str]) -> list[str]:
    notes = []
    for m in names:
        origin = prompt_set_origin(exp, m)
        if origin not in ("file", m, None):
            notes.append(f"{m}: no prompt file; handled like {origin}, it takes the shipped {origin} prompt set, "
                         f"which describes at least half of its findings.")
        normal = exp.manifest(m).read_as_normal
        if normal:
            notes.append(f"{m}: the labels {', '.join(normal)} are read as the normal class (the prompt set names "
                         f"them as other names of 'normal'), not as findings.")
        if exp.manifest(m).other_label_separator:
            notes.append(f"{m}: {exp.manifest(m).label_separator_note()}")
        missing = missing_classes(prompt_set_for(exp, m), modality_classes(exp, m))
        if missing and has_findings(exp, m):
            notes.append(f"{m}: no prompt-file entry for {', '.join(missing)}: these classes use naive prompts made "
                         f"from the label name in the modality's template, in the expert and sampled tables too "
                         f"(only their expert descriptions are missing).")
    return notes


@keeps_sentence_vectors
def run_eval(exp: Experiment, *, command: str = "m3bind eval", log=print, few_shot: bool = True,
             progress=None) -> dict:
    """Compute every table for the variants available and write the report next to the outputs."""
    from m3bind.eval.report import write_report
    from m3bind.stages.control import run_control

    start = time.perf_counter()
    timer = StageTimer(log=lambda _: None)
    names = bound_names = list(exp.cfg.bind.modalities or exp.modalities)
    # A modality may come with training data only (bound, but evaluated elsewhere): it is left
    # out of the test-split sections, and the report says so, rather than failing the others.
    untested = [m for m in names if not has_rows(exp, m, REPORT_SPLIT)]
    names = [m for m in names if m not in untested]
    if not names:
        raise ConfigError(f"no modality's manifest has '{REPORT_SPLIT}' rows to evaluate on (a manifest without a "
                          "'split' column is all 'train'): give the studies to report on split 'test'")
    check_paired_set(exp)
    bootstrap = Bootstrap(exp.cfg.eval.bootstrap_resamples, exp.cfg.eval.bootstrap_seed)
    if exp.cfg.eval.lambda0_control and (bind_dir(exp) / "model" / "bound.json").exists():
        with timer("control binding"):
            run_control(exp, progress=progress, log=log)
    # Nothing trains from here on: the variants can share their image towers' embeddings.
    with exp.sharing_image_embeddings():
        report, maps = _evaluate_variants(exp, names, command, log, few_shot, timer, bootstrap,
                                          bound_names=bound_names)
    if untested:
        report["modalities"] = bound_names  # sections name only the ones they cover
        report["notes"].append(f"{', '.join(untested)}: no '{REPORT_SPLIT}' rows in the manifest (a manifest without "
                               "a 'split' column is all 'train'), so zero-shot, few-shot and text-to-image retrieval "
                               "were not evaluated for it; its paired studies, if any, still take part in retrieval.")
    report["seconds"] = time.perf_counter() - start
    report["timings"] = timer.seconds
    out_dir = exp.out_dir / "report"
    if on_main_process(lambda: write_report(report, out_dir, embeddings=maps)) is not None:
        log(f"report written to {out_dir / 'report.md'}")
    return report


def _final_model_similarity(exp: Experiment, views: ModelViews, pairs: Sequence[tuple[str, str]]) -> tuple[dict, dict | None]:
    """The final model ranks image queries as it was saved to rank them (chosen on validation by
    the distill stage, with its own centres), so the report measures what search does. A fixed
    ``eval.retrieval_similarity``, or a model saved before the choice was recorded, is chosen here
    like the other variants."""
    model = views.model
    if exp.cfg.eval.retrieval_similarity != "auto" or model.retrieval_validation is None:
        choices, centres = choose_retrieval_similarity(exp, {"m3bind": views}, pairs)
        return choices["m3bind"], centres.get("m3bind")
    centres = model.centres if model.retrieval_similarity == "centred" else None
    return ({"chosen": model.retrieval_similarity, "validation_concept_auc": model.retrieval_validation,
             "validated": True, "from_model": True}, centres)


def _evaluate_variants(exp: Experiment, names: Sequence[str], command: str, log, few_shot: bool, timer: StageTimer,
                       bootstrap: Bootstrap, bound_names: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Every report section for the variants whose files exist, and the embedding maps' samples.
    ``names``: the modalities with test rows (the per-modality sections); ``bound_names``: every
    bound one, whose paired studies take part in retrieval (default: ``names``)."""
    import m3bind
    from m3bind.eval.real_reports import real_report_check
    from m3bind.eval.student_check import run_student_check
    from m3bind.train.bind import text_space

    # Every variant holds every bound modality: the baselines (unbound, random heads, chaining)
    # must cover the same retrieval pairs as the bound model, test rows or not.
    variants = load_variants(exp, bound_names or names)
    pairs = retrieval_pairs(exp) if exp.cfg.paired_manifests else []

    # --- choices, on the validation splits only ---
    with timer("choices on validation"):
        fixed = configured_rule(exp)
        rule_choice = ({"chosen": fixed.name, "configured": True} if fixed is not None
                       else choose_prototype_rule(exp, variants))
        rule = PROTOTYPE_RULES[rule_choice["chosen"]]
        chaining_choice = choose_chaining_profile(exp, variants["unbound"], pairs) if pairs else None
        similarity_choice, centres = (choose_retrieval_similarity(
            exp, {v: w for v, w in variants.items() if v != "m3bind"}, pairs) if pairs else (None, {}))
        if similarity_choice is not None and "m3bind" in variants:
            similarity_choice["m3bind"], centres["m3bind"] = _final_model_similarity(exp, variants["m3bind"], pairs)
    log((f"prototypes '{rule.name}' ({rule.description}), the default: {rule_choice['reason']}"
         if rule_choice.get("default") else f"chosen on validation: prototypes '{rule.name}' ({rule.description})")
        + (f", chaining profile '{chaining_choice['chosen']}'" if chaining_choice else "")
        + (", retrieval similarity " + ", ".join(f"{v} '{c['chosen']}'" for v, c in similarity_choice.items())
           if similarity_choice else ""))

    present = [v for v in VARIANTS if v in variants or (v in ("random_heads", "chaining") and pairs)]
    report: dict = {"m3bind_version": m3bind.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "command": command, "modalities": list(names), "variants": {v: VARIANTS[v] for v in present},
                    "protocol": {"tuning_split": "val", "report_split": REPORT_SPLIT, "prototype_rule": rule.name,
                                 "prototype_rule_description": rule.description, "prototype_choice": rule_choice,
                                 "chaining": chaining_choice, "retrieval_similarity": similarity_choice,
                                 "bootstrap": {"resamples": bootstrap.resamples, "seed": bootstrap.seed,
                                               "level": bootstrap.level}},
                    "zero_shot": {}, "few_shot": {}, "retrieval": {}, "text_to_image": {}, "text_space": {},
                    "differences": [], "notes": []}

    # --- the test splits, read once ---
    embeddings = TestEmbeddings(exp)
    raw: dict[str, dict[str, dict]] = {}
    for m in names:
        report["zero_shot"][m], raw[m] = {}, {}
        if not has_findings(exp, m):
            report["notes"].append(f"{m}: zero-shot and few-shot classification not measured: {NO_FINDINGS}. "
                                   "Retrieval and text-to-image retrieval are measured; training used plain CLIP "
                                   "targets for it.")
            log(f"evaluated {m} (no findings: retrieval only)")
            continue
        with timer("zero-shot"):
            for v, views in variants.items():
                if m in views:
                    report["zero_shot"][m][v], raw[m][v] = zero_shot_tables(exp, m, views[m],
                                                                            embeddings(v, m, views[m]), rule, bootstrap)
        entries = report["zero_shot"][m].values()
        if entries and all(entry["expert"] is None for entry in entries):
            report["notes"].append(f"{m}: zero-shot classification not measured: every test study has several "
                                   "findings, and the classification tables score single-finding studies; the "
                                   "presence table scores every study.")
        if few_shot and not _probe_classes_ok(exp, m):
            report["notes"].append(f"{m}: few-shot probes skipped: the training split's single-label studies "
                                   "cover fewer than two classes, and a probe needs two.")
        elif few_shot:
            with timer("few-shot"):
                report["few_shot"][m] = {v: few_shot_table(exp, m, views[m], embeddings(v, m, views[m]))
                                         for v, views in variants.items() if m in views}
        log(f"evaluated {m}")
    texts = heldout_texts(exp, names)
    if pairs:
        with timer("retrieval"):
            scores, extras = retrieval_query_scores(exp, variants, pairs, chaining_choice["chosen"],
                                                    chaining_choice["concepts"], similarity_choice, centres)
            for v, by_pair in scores.items():
                report["retrieval"][v] = {pair: _retrieval_entry(s, bootstrap,
                                                                 **(extras[pair] if v == "random_heads" else {}))
                                          for pair, s in by_pair.items()}
            report["differences"] += retrieval_differences(scores, bootstrap)
    report["differences"] += zero_shot_differences(raw, bootstrap)
    with timer("text-to-image and text space"):
        for v, views in variants.items():
            report["text_to_image"][v] = {m: _stringify_k(text_to_image(exp, m, views[m], embeddings(v, m, views[m])))
                                          for m in names if m in views}
            if v != "m3bind":
                agreement = text_space(views, texts)
                report["text_space"][v] = {"agreement": agreement["text_agreement"],
                                           "text_recall": agreement["text_recall"]}
    if exp.cfg.eval.student_check.enabled and {"bound", "m3bind"} <= set(variants):
        with timer("student check"):
            report["student_check"] = run_student_check(exp, variants["bound"], variants["m3bind"], rule, bootstrap,
                                                        log=log)
    chest = _chest_xray_modality(exp, names)
    if exp.cfg.eval.real_reports and chest is not None:
        with timer("real reports"):
            report["real_reports"] = real_report_check({v: variants[v][chest] for v in ("bound", "m3bind")
                                                        if v in variants and chest in variants[v]},
                                                       prompt_set_for(exp, chest), rule, bootstrap,
                                                       classes=modality_classes(exp, chest),
                                                       limit=exp.cfg.eval.real_reports_limit)
            report["real_reports"]["modality"] = chest
        if report["real_reports"].get("skipped"):
            report["notes"].append(f"Real-report check skipped: {report['real_reports']['skipped']}")

    report["notes"] += _notes(exp, names, rule_choice, pairs)
    report["notes"] += truncation_notes(exp, names, variants)
    report["notes"] += _pairs_without_concepts_note(report["retrieval"])
    report["notes"] += [f"{pair}: {scores['queries_without_partner']} of {scores['queries']} query patients have no "
                        f"study of the gallery modality in the paired '{REPORT_SPLIT}' rows; they count as misses in "
                        "Recall@K (concept metrics do not need the same patient)." + _unpaired_spelling(exp, pair)
                        for pair, scores in report["retrieval"].get("bound", {}).items()
                        if scores.get("queries_without_partner")]
    if pairs and not report["retrieval"].get("chaining") and not chaining_choice["concepts"]:
        report["notes"].append("The chaining baseline did not run: it ranks studies through concepts that two "
                               "paired modalities share, and these have none.")
    ablations = {path.parent.name: json.loads(path.read_text())
                 for path in sorted((exp.out_dir / "ablations").glob("*/ablation.json"))}
    if ablations:
        report["ablations"] = ablations
    evaluated = lambda views: {m: view for m, view in views.items() if m in names}
    maps = {"before": embedding_sample(exp, evaluated(variants["unbound"]), "unbound", embeddings)}
    after = "m3bind" if "m3bind" in variants else "bound" if "bound" in variants else None
    if after:
        maps["after"] = embedding_sample(exp, evaluated(variants[after]), after, embeddings)
    return report, maps


def _pairs_without_concepts_note(retrieval: Mapping[str, Mapping[str, dict]]) -> list[str]:
    """A note naming the retrieval pairs whose concept numbers are undefined: no test study of
    either modality shows a concept the other modality can show."""
    undefined = sorted({pair for scores in retrieval.values() for pair, s in scores.items()
                        if s.get("concept_chance") is None})
    if not undefined:
        return []
    return [f"{', '.join(undefined)}: no paired test study shows a concept both modalities of the pair can show "
            "(their labels have nothing in common), so concept precision and concept AUC are undefined (–); "
            "only Recall@K (the same patient) is measured. A 'concepts' column in the paired manifests names "
            "cross-modal concepts (e.g. cardiomegaly on an X-ray and on the ECG showing left ventricular "
            "hypertrophy)."]


# Training reports per modality whose length is checked against the text encoders' token limits.
TRUNCATION_SAMPLE = 2000


def truncation_notes(exp: Experiment, names: Sequence[str], variants: Mapping[str, Mapping]) -> list[str]:
    """One note per modality whose training reports reach a text encoder's token limit (its own, or
    the student's): text past the limit is never read, which a user with long reports must know."""
    from m3bind.eval.protocol import reports_cut_at_the_limit

    notes = []
    student = next(iter(variants.get("m3bind", {}).values()), None)
    for m in names:
        texts = exp.manifest(m).split("train").texts()
        sample = texts[:TRUNCATION_SAMPLE]
        if not sample:
            continue
        readers = {"its text encoder": variants["unbound"][m].model.tokenize} if m in variants["unbound"] else {}
        if student is not None:
            readers["the student"] = student.text_encoder.tokenize
        parts = []
        for reader, tokenize in readers.items():
            cut, limit = reports_cut_at_the_limit(tokenize, sample)
            if cut:
                parts.append(f"{cut} reach the {limit}-token limit of {reader}")
        if parts:
            of = f"the first {len(sample)} of its {len(texts)}" if len(texts) > len(sample) else f"its {len(texts)}"
            notes.append(f"{m}: of {of} training reports, {' and '.join(parts)}; what follows the limit is not read.")
    return notes


def _patient_overlap_notes(exp: Experiment, names: Sequence[str]) -> list[str]:
    """Test numbers are meant for unseen patients: say where a test patient also trained."""
    notes = []
    for m in names:
        manifest = exp.manifest(m)
        trained = patient_ids(manifest, "train")
        both = len(trained & patient_ids(manifest, REPORT_SPLIT))
        if both:
            notes.append(f"{m}: {both} patient(s) have studies on both the 'train' and the 'test' split of "
                         f"{manifest.source.name}; its test numbers are partly on patients it trained on.")
        if m in exp.cfg.paired_manifests:
            paired_test = patient_ids(exp.paired_manifest(m), REPORT_SPLIT)
            if trained & paired_test:
                notes.append(f"{m}: {len(trained & paired_test)} of the {len(paired_test)} paired test patients "
                             f"also have training studies in {manifest.source.name}; retrieval on them is "
                             "not on unseen patients.")
    return notes


def _unpaired_spelling(exp: Experiment, pair: str) -> str:
    """For a query patient without a partner: a hint when the partner is there, spelled otherwise."""
    query, gallery = pair.split("->")
    ids = {m: patient_ids(exp.paired_manifest(m), REPORT_SPLIT) for m in (query, gallery)}
    spelled = id_spelled_otherwise(ids[query] - ids[gallery], ids[gallery])
    return "" if spelled is None else (f" Some may be there under another spelling of their id: '{spelled[0]}' in "
                                       f"{query} is '{spelled[1]}' in {gallery}.")


def _chest_xray_modality(exp: Experiment, names: Sequence[str]) -> str | None:
    """The modality whose text side the chest X-ray reports test: the one named ``xray``, else the
    first handled like it (``like: xray``, e.g. ``cxr``, or an X-ray model such as MGCA under
    another name), else None."""
    xray_like = [m for m in names if m == "xray" or exp.known_as(m) == "xray"]
    return "xray" if "xray" in xray_like else next(iter(xray_like), None)


def _notes(exp: Experiment, names: Sequence[str], rule_choice: dict, pairs: list) -> list[str]:
    notes = []
    if not rule_choice.get("configured") and not rule_choice["agree"]:
        notes.append("The variants disagree on the best prototype rule on validation ("
                     + ", ".join(f"{v}: {r}" for v, r in rule_choice["best_per_variant"].items())
                     + f"); every table uses '{rule_choice['chosen']}' (best mean), and each zero-shot entry's "
                       "expert_by_rule lists the test numbers under every rule.")
    notes += _prompt_notes(exp, names)
    notes += _patient_overlap_notes(exp, names)
    without_val = [m for m in names if not has_rows(exp, m, "val")]
    if without_val and not rule_choice.get("default") and not rule_choice.get("configured"):
        notes.append(f"{', '.join(without_val)}: no 'val' rows, so the prototype rule used for "
                     f"{'it' if len(without_val) == 1 else 'them'} was chosen on the other modalities' validation "
                     "studies.")
    if rule_choice.get("default"):
        notes.append(f"No modality has single-label validation studies (split 'val'), so the prototype rule could "
                     f"not be chosen on validation: the default '{rule_choice['chosen']}' is used. Add validation "
                     "rows, or set eval.prototypes, for a choice of your own.")
    if pairs and not paired_has_split(exp, "val"):
        notes.append("The paired manifests have no 'val' rows: the chaining profile could not be chosen on "
                     f"validation ('{DEFAULT_CHAINING_PROFILE}' is used) and its concept names come from the test "
                     "rows. Add paired validation patients (split 'val') for choices that never see test.")
    if pairs and not concepts_from_column(exp):
        notes.append("The paired manifests have no 'concepts' column: concepts are the labels, and each pair is "
                     "scored on the labels both of its modalities use.")
    if pairs:
        notes.append("Image-image retrieval compares two image modalities in the shared space; no paired image data "
                     "was used in training. Concept precision counts a hit when the retrieved study shows the same "
                     "cross-modal concepts as the query. Concept AUC asks whether studies showing the query's "
                     "concept rank above those that do not (chance 0.5). random_heads is chance, not a method: "
                     f"the mean over {RANDOM_HEAD_DRAWS} random head draws (± the spread of the concept AUC). "
                     "chaining and control are what a user could do without binding, or with binding's extra "
                     "training but no text alignment.")
    notes.append("Intervals are 95% percentile bootstrap intervals over test studies (zero-shot) or queries "
                 "(retrieval); differences use the same resamples for both sides (paired).")
    notes.append("Few-shot probes use frozen image embeddings; binding trains text-side LoRA and linear heads, so "
                 "the probes of the variants differ only through the heads.")
    for split, items in exp.read_notes().items():
        notes.append(f"{split}: reading left part of some study files out: " + "; ".join(items))
    for split, items in exp.skipped_studies().items():
        notes.append(f"{len(items)} unreadable {split} studies were left out (data.on_error: skip): "
                     + "; ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    return notes
