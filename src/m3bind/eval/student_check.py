"""The student check: does the final model keep its bound teachers' zero-shot accuracy on a
cohort it never saw, written in wording it never saw?

A second synthetic cohort (``eval.student_check``: another seed, the alternative report
vocabulary of :mod:`m3bind.cohort.alternative_vocabulary`, test splits only) is written once
into ``<output_dir>/student_check/cohort``. On each built-in modality's test studies, the bound
teachers (each modality with its own bound text encoder) and the final model (bound image
encoders + the student) are compared on:

- ``image``: image zero-shot with the modality's prompt set (new patients, known wording);
- ``image_alternative``: image zero-shot with the alternative vocabulary's class descriptions
  (new wording);
- ``reports``: each alternative-vocabulary report classified by its text embedding against the
  same alternative prototypes (the text side alone).

Each with bootstrap intervals and the paired difference final - teachers; the bar is the
issue's: within 5 points of the teachers in accuracy and in AUC.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from m3bind.devices import on_main_process
from m3bind.eval.bootstrap import Bootstrap
from m3bind.eval.prompts import PromptSet, expert_prompts
from m3bind.eval.zeroshot import PrototypeRule, ZeroShotScores, class_prototypes, single_label_targets
from m3bind.experiment import Experiment

BAR = 0.05
VOCABULARY = "alternative"


def student_check_cohort(exp: Experiment, log=print):
    """The check's cohort folder, generated unless one with the configured settings exists.
    Checked and written by the main process of a launched group alone; the others wait for it."""
    folder = exp.out_dir / "student_check" / "cohort"
    on_main_process(lambda: _write_check_cohort(exp, folder, log))
    return folder


def _write_check_cohort(exp: Experiment, folder, log) -> None:
    from m3bind.cohort import generate_cohort

    cfg = exp.cfg.eval.student_check
    info = folder / "cohort.json"
    wanted = {"seed": cfg.seed, "n_patients": cfg.patients, "report_vocabulary": VOCABULARY}
    if info.exists():
        current = json.loads(info.read_text())
        test_counts = {c.get("test") for c in current.get("counts", {}).values()}
        if {k: current.get(k) for k in wanted} == wanted and test_counts == {cfg.test_patients}:
            return
    log(f"student check: writing a second cohort (seed {cfg.seed}, {VOCABULARY} report vocabulary, "
        f"{cfg.test_patients} test studies per modality) into {folder}")
    generate_cohort(folder, n_patients=cfg.patients, seed=cfg.seed, workers=2, test_patients=cfg.test_patients,
                    report_vocabulary=VOCABULARY, test_only=True)


def _check_experiment(exp: Experiment, folder, modalities: list[str]) -> Experiment:
    specs = {m: spec.model_copy(update={"manifest": str((folder / m / "manifest.csv").resolve())})
             for m, spec in exp.cfg.modalities.items() if m in modalities}
    cfg = exp.cfg.model_copy(update={"modalities": specs, "paired_manifests": {},
                                     "output_dir": str((exp.out_dir / "student_check").resolve())})
    return Experiment(cfg, exp.config_path, cache_dir=exp.cache_dir, sentence_encoder=exp.sentence_encoder)


def alternative_prompt_set(modality: str, template: str) -> PromptSet:
    """The alternative vocabulary's class descriptions as a prompt set in ``template``."""
    from m3bind.cohort.alternative_vocabulary import prompt_classes

    classes = {name: tuple(phrases) for name, phrases in prompt_classes(modality).items()}
    return PromptSet(source=f"<alternative vocabulary, {modality}>", classes=classes, template=template,
                     modality=modality)


def _compare(teachers: ZeroShotScores, final: ZeroShotScores, bootstrap: Bootstrap) -> dict:
    counts = bootstrap.counts(teachers.n)
    t_values, f_values = teachers.resampled(counts), final.resampled(counts)
    t_metrics, f_metrics = teachers.metrics(), final.metrics()
    difference = {}
    for metric in ("accuracy", "auc_macro"):
        if t_metrics[metric] is not None and f_metrics[metric] is not None:
            difference[metric] = f_metrics[metric] - t_metrics[metric]
            difference[f"{metric}_ci"] = bootstrap.interval(f_values[metric] - t_values[metric])
    return {"teachers": {**t_metrics, **teachers.intervals(bootstrap)},
            "final": {**f_metrics, **final.intervals(bootstrap)}, "difference": difference,
            "within_bar": all(difference.get(m, 0.0) >= -BAR for m in ("accuracy", "auc_macro"))}


@torch.no_grad()
def _text_scores(view, texts, targets, classes, prompts, rule: PrototypeRule) -> ZeroShotScores:
    from m3bind.eval.protocol import embed_texts

    prototypes = class_prototypes(view.encode_texts, prompts, renormalise=rule.renormalise)
    return ZeroShotScores(targets=targets, scores=(embed_texts(view.encode_texts, texts) @ prototypes.T).numpy(),
                          classes=list(classes))


@torch.no_grad()
def run_student_check(exp: Experiment, teachers: Mapping, final: Mapping, rule: PrototypeRule,
                      bootstrap: Bootstrap, log=print) -> dict:
    """The check's results: per modality and measure, teachers vs final with intervals."""
    from m3bind.cohort.writer import RENDERERS
    from m3bind.eval.protocol import embed_view_images, modality_classes, prompt_set_for, zero_shot_scores

    modalities = [m for m in teachers if m in final and m in RENDERERS]
    folder = student_check_cohort(exp, log=log)
    check = _check_experiment(exp, folder, modalities)
    cfg = exp.cfg.eval.student_check
    results = {}
    with check.sharing_image_embeddings():  # teachers and final share their image towers
        for m in modalities:
            studies = check.studies(m, "test")
            classes = modality_classes(exp, m)
            shipped = prompt_set_for(exp, m)
            alternative = alternative_prompt_set(m, shipped.template)
            keep, targets = single_label_targets(studies.labels, classes)
            texts = [studies.texts[i] for i in keep]
            per_variant = {}
            for name, view in (("teachers", teachers[m]), ("final", final[m])):
                image_emb = embed_view_images(check, view, studies.images)
                alt_prompts = expert_prompts(alternative, classes, class_name=rule.class_name)
                per_variant[name] = {
                    "image": zero_shot_scores(view, studies, classes, expert_prompts(shipped, classes,
                                                                                     class_name=rule.class_name),
                                              rule, image_emb),
                    "image_alternative": zero_shot_scores(view, studies, classes, alt_prompts, rule, image_emb),
                    "reports": _text_scores(view, texts, targets, classes, alt_prompts, rule),
                }
            results[m] = {measure: _compare(per_variant["teachers"][measure], per_variant["final"][measure], bootstrap)
                          for measure in ("image", "image_alternative", "reports")}
            log(f"student check {m}: image zero-shot teachers {results[m]['image']['teachers']['accuracy']:.3f} / final "
                f"{results[m]['image']['final']['accuracy']:.3f}; new wording {results[m]['image_alternative']['teachers']['accuracy']:.3f}"
                f" / {results[m]['image_alternative']['final']['accuracy']:.3f}")
    gaps = [r[measure]["difference"].get(metric) for r in results.values() for measure in r
            for metric in ("accuracy", "auc_macro")]
    gaps = [g for g in gaps if g is not None]
    return {"cohort": {"path": str(folder), "seed": cfg.seed, "patients": cfg.patients,
                       "test_patients": cfg.test_patients, "report_vocabulary": VOCABULARY},
            "prototypes": rule.name, "bar": BAR, "modalities": results,
            "worst_difference": float(min(gaps)) if gaps else None,
            "meets_bar": bool(all(r[measure]["within_bar"] for r in results.values() for measure in r))}
