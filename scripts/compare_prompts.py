"""Zero-shot of bound models on VALIDATION with the modality's prompt set and with another prompt
file: does a finding about prompts hold? Test is never read.

Usage: python scripts/compare_prompts.py OUTPUT_DIR/config.yaml MODALITY PROMPTS.yaml [BIND_RUN ...]

BIND_RUN: folders under OUTPUT_DIR/tuning written by scripts/tune_binding.py (for example
lambda_text-30); without any, the experiment's own binding. For each it prints expert-prompt
accuracy and recall per class on the val split, once per prompt set.
"""
import sys
from pathlib import Path

import torch

from m3bind.eval.protocol import TUNING_SPLIT, class_prompts, modality_classes, stage_prototype_rule, zero_shot_scores
from m3bind.experiment import Experiment
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import load_bound


def with_prompt_file(exp: Experiment, modality: str, prompts: Path) -> Experiment:
    spec = exp.cfg.modalities[modality].model_copy(update={"prompts": str(prompts.resolve())})
    cfg = exp.cfg.model_copy(update={"modalities": {**exp.cfg.modalities, modality: spec}})
    return Experiment(cfg, exp.config_path, cache_dir=exp.cache_dir)


@torch.no_grad()
def main(config: str, modality: str, prompts: str, runs: list[str]) -> None:
    exp = Experiment.from_file(config)
    rule = stage_prototype_rule(exp)
    classes = modality_classes(exp, modality)
    studies = exp.studies(modality, TUNING_SPLIT)
    prompt_sets = {"the modality's prompts": class_prompts(exp, modality, classes, "expert", rule),
                   Path(prompts).name: class_prompts(with_prompt_file(exp, modality, Path(prompts)), modality,
                                                     classes, "expert", rule)}
    sources = {name: child_experiment(exp, exp.out_dir / "tuning" / name, {}) for name in runs} or {"bind": exp}
    for name, source in sources.items():
        view = load_bound(source)[modality].eval()
        for label, per_class in prompt_sets.items():
            scores = zero_shot_scores(view, studies, classes, per_class, rule)
            if scores is None:
                print(f"{name}, {label}: no single-finding {TUNING_SPLIT} studies")
                continue
            metrics = scores.metrics()
            recalls = ", ".join(f"{c} {r:.2f}" for c, r in metrics["recall_per_class"].items())
            print(f"{name}, {label}: accuracy {metrics['accuracy']:.3f} on {scores.n} {TUNING_SPLIT} studies "
                  f"({recalls})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
