"""Why does the student fall short of its teachers? Measure student options on VALIDATION data.

Each option distils a fresh student from the experiment's bound model (``bind`` must have run)
with other ``distill`` settings, into ``<output_dir>/student_options/<option>``, and compares it
with the bound teachers:
  val zero-shot   image zero-shot on each modality's validation split (the modality's prompts)
  new wording     image zero-shot and report -> class on a cohort in the alternative report
                  vocabulary, seed 2 (a validation cohort: the evaluation's student check uses
                  another seed)
Numbers are final minus teachers, in accuracy (mean over modalities, and the worst modality).

Usage: python scripts/student_options.py OUTPUT_DIR/config.yaml [option ...]
Options: demo (the config's distill settings), long_kd (4x the KD steps), mean_pool (the built-in
student with mean pooling instead of its [CLS] state), mean_pool_long_kd (both), prompts (KD on
the zero-shot prompt texts too, distill.prompt_texts), prompts_long_kd (and 4x the KD steps), kd_only / prompts_kd_only (every step KD, no contrastive
phase; the same step count), kd_weight_dim / prompts_kd_weight_dim (L_KD weighted by the shared
width in the contrastive steps: a sum over dimensions instead of a mean), long_kd_weighted (the
config's settings with 4x the KD steps), wide / wide_long_kd (a built-in student of width 256 and 4
layers instead of 128 and 2), minilm (the
pretrained all-MiniLM-L6-v2 student, same steps; about 17x the cost of a built-in step),
minilm_kd_only (MiniLM, every step KD), own_teacher / own_teacher_quarter (distill.other_teachers 0
/ 0.25: each text learnt from its own modality's teacher, the others weighted 0 / 0.25),
own_teacher_kd_only (other_teachers 0, every step KD), scratch_student / frozen_minilm (the built-in
student's backbone: a small BERT from scratch, or frozen all-MiniLM-L6-v2 under a trainable layer).
Also printed: the student's mean pairwise cosine over a few validation reports and prompts (1.0 =
it answers every text with the same vector).
"""
import shutil
import sys
import time

import numpy as np
import torch

from m3bind.eval.bootstrap import Bootstrap
from m3bind.eval.protocol import modality_zero_shot, stage_prototype_rule
from m3bind.experiment import Experiment
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import bind_dir, load_bound, model_dir

VALIDATION_COHORT_SEED = 2


def options(exp: Experiment) -> dict[str, dict]:
    distill = exp.cfg.distill
    mean_pool = distill.student.model_copy(update={"pooling": "mean"})
    return {"demo": {},
            "long_kd": {"kd_steps": 4 * distill.kd_steps},
            "mean_pool": {"student": mean_pool},
            "mean_pool_long_kd": {"student": mean_pool, "kd_steps": 4 * distill.kd_steps},
            "prompts": {"prompt_texts": True},
            "prompts_long_kd": {"prompt_texts": True, "kd_steps": 4 * distill.kd_steps},
            "kd_only": {"kd_steps": distill.kd_steps + distill.contrastive_steps, "contrastive_steps": 0},
            "prompts_kd_only": {"prompt_texts": True, "kd_steps": distill.kd_steps + distill.contrastive_steps,
                                "contrastive_steps": 0},
            "kd_weight_dim": {"kd_weight": float(exp.cfg.shared_dim)},
            "prompts_kd_weight_dim": {"prompt_texts": True, "kd_weight": float(exp.cfg.shared_dim)},
            "long_kd_weighted": {"kd_steps": 4 * distill.kd_steps},
            "scratch_student": {"student": distill.student.model_copy(update={"backbone": "scratch"})},
            "frozen_minilm": {"student": distill.student.model_copy(update={"backbone": "minilm"})},
            "wide": {"student": distill.student.model_copy(update={"width": 256, "layers": 4})},
            "wide_long_kd": {"student": distill.student.model_copy(update={"width": 256, "layers": 4}),
                             "kd_steps": 4 * distill.kd_steps},
            "own_teacher": {"other_teachers": 0.0},
            "own_teacher_quarter": {"other_teachers": 0.25},
            "own_teacher_kd_only": {"other_teachers": 0.0, "kd_steps": distill.kd_steps + distill.contrastive_steps,
                                    "contrastive_steps": 0},
            "minilm": {"student": distill.student.model_copy(update={"type": "minilm"})},
            "minilm_kd_only": {"student": distill.student.model_copy(update={"type": "minilm"}),
                               "kd_steps": distill.kd_steps + distill.contrastive_steps, "contrastive_steps": 0}}


def child(exp: Experiment, name: str, updates: dict) -> Experiment:
    """The option's experiment: the parent's pretrained models and bound model, other distill settings."""
    out = exp.out_dir / "student_options" / name
    (out / "bind").mkdir(parents=True, exist_ok=True)
    if not (out / "bind" / "model").exists():
        shutil.copytree(bind_dir(exp) / "model", out / "bind" / "model")
    base = child_experiment(exp, out, {})
    student_check = exp.cfg.eval.student_check.model_copy(update={"enabled": True, "seed": VALIDATION_COHORT_SEED})
    cfg = base.cfg.model_copy(update={"distill": exp.cfg.distill.model_copy(update=updates),
                                      "eval": exp.cfg.eval.model_copy(update={"student_check": student_check})})
    return Experiment(cfg, exp.config_path, cache_dir=exp.cache_dir)


def measure(option: Experiment, teachers: dict) -> dict:
    from m3bind.eval.student_check import run_student_check
    from m3bind.models.bound import M3Bind

    final = M3Bind.from_pretrained(model_dir(option)).to(option.device)
    views = {m: final.view(m) for m in final.modalities}
    rule = stage_prototype_rule(option)
    val = {m: modality_zero_shot(option, m, views[m])["accuracy"] - modality_zero_shot(option, m, teachers[m])["accuracy"]
           for m in views}
    check = run_student_check(option, teachers, views, rule, Bootstrap(resamples=200), log=lambda _: None)
    wording = {m: r["image_alternative"]["difference"]["accuracy"] for m, r in check["modalities"].items()}
    reports = {m: r["reports"]["difference"]["accuracy"] for m, r in check["modalities"].items()}
    return {"val": val, "new_wording_images": wording, "new_wording_reports": reports}


@torch.no_grad()
def student_spread(option: Experiment) -> float:
    """Mean pairwise cosine of the student's embeddings of validation reports and short prompts."""
    from m3bind.models.bound import M3Bind

    final = M3Bind.from_pretrained(model_dir(option)).to(option.device)
    final.eval()
    texts = [t for m in final.modalities for t in option.manifest(m).split("val").texts()[:4]]
    texts += ["Impression: cardiomegaly.", "Findings: atrial fibrillation.", "Impression: no acute abnormality."]
    emb = final.encode_texts(texts)
    n = len(texts)
    return float(((emb @ emb.T).sum() - n) / (n * (n - 1)))


def main(config: str, names: list[str]) -> None:
    from m3bind.stages.distill import run_distill

    exp = Experiment.from_file(config)
    teachers = load_bound(exp)
    for view in teachers.values():
        view.eval()
    chosen = options(exp)
    for name in names or list(chosen):
        option = child(exp, name, chosen[name])
        start = time.perf_counter()
        if not (model_dir(option) / "m3bind.json").exists():
            run_distill(option, log=lambda _: None)
        seconds = time.perf_counter() - start
        result = measure(option, teachers)
        line = f"student pairwise cos {student_spread(option):.4f} | " + " | ".join(f"{key} mean {np.mean(list(v.values())):+.3f} worst {min(v.values()):+.3f} "
                          f"({', '.join(f'{m} {d:+.3f}' for m, d in v.items())})" for key, v in result.items())
        print(f"{name} (distill {seconds:.0f} s): {line}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
