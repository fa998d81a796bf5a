"""Choose binding settings on VALIDATION data: bind once per setting and compare on the paired
validation set and the validation splits; test is never read.

Each setting binds from the experiment's pretrained models (``pretrain`` must have run) into
``<output_dir>/tuning/<setting>`` and is scored on:
  concept AUC   cross-modal retrieval on the paired validation patients, mean over the pairs
  zero-shot     expert-prompt zero-shot accuracy on each modality's validation split, mean
  agreement     text agreement of the bound text encoders on held-out reports

Usage: python scripts/tune_binding.py OUTPUT_DIR/config.yaml lambda_text 10 30 100 300
       (any bind key with a numeric or true/false value: lambda_text, lr, steps, and nested keys
       such as balance.lr_scaling; --detail ct adds that modality's recall per class)
"""
import sys
import time

import numpy as np

from m3bind.eval.protocol import (TUNING_SPLIT, class_prompts, heldout_texts, modality_classes, modality_zero_shot,
                                  paired_query_scores, retrieval_pairs, stage_prototype_rule, zero_shot_scores)
from m3bind.experiment import Experiment
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import bind_dir, load_bound
from m3bind.stages.bind import run_bind
from m3bind.train.bind import text_agreement


def recall_per_class(child: Experiment, modality: str, view) -> dict[str, float]:
    """Validation recall of each class (expert prompts), to see which class a setting gains or loses."""
    rule = stage_prototype_rule(child)
    classes = modality_classes(child, modality)
    scores = zero_shot_scores(view, child.studies(modality, TUNING_SPLIT), classes,
                              class_prompts(child, modality, classes, "expert", rule), rule)
    return scores.metrics()["recall_per_class"] if scores is not None else {}


def bind_updates(cfg, key: str, raw: str) -> dict:
    """{"lambda_text": 30.0} for 'lambda_text 30'; {"balance": <balance with lr_scaling off>} for
    'balance.lr_scaling false': the value takes the type of the config's current one."""
    head, _, rest = key.partition(".")
    current = getattr(cfg, head)
    if rest:
        return {head: current.model_copy(update=bind_updates(current, rest, raw))}
    value = raw.lower() == "true" if isinstance(current, bool) else type(current)(float(raw))
    return {head: value}


def score(child: Experiment) -> dict:
    views = load_bound(child)
    for view in views.values():
        view.eval()
    pairs = retrieval_pairs(child)
    scores = paired_query_scores(child, views, pairs, TUNING_SPLIT)
    auc = {pair: s.summary()["concept_auc"] for pair, s in scores.items()}
    zero_shot = {m: modality_zero_shot(child, m, view)["accuracy"] for m, view in views.items()}
    return {"concept_auc": auc, "zero_shot": zero_shot,
            "agreement": text_agreement(views, heldout_texts(child, list(views)))}


def main(config: str, key: str, values: list[str], detail: str | None = None) -> None:
    exp = Experiment.from_file(config)
    current = exp.cfg.bind
    for part in key.split("."):
        current = getattr(current, part)
    print(f"{key}: the config has {current}; validation only (paired val patients, val splits)", flush=True)
    for raw in values:
        child = child_experiment(exp, exp.out_dir / "tuning" / f"{key}-{raw}", bind_updates(exp.cfg.bind, key, raw))
        start = time.perf_counter()
        if not (bind_dir(child) / "model" / "bound.json").exists():
            run_bind(child, log=lambda _: None)
        seconds = time.perf_counter() - start
        result = score(child)
        aucs = result["concept_auc"]
        print(f"{key}={raw} (bind {seconds:.0f} s): concept AUC mean {np.mean(list(aucs.values())):.3f} "
              f"({', '.join(f'{p} {a:.3f}' for p, a in aucs.items())}) | zero-shot mean "
              f"{np.nanmean(list(result['zero_shot'].values())):.3f} "
              f"({', '.join(f'{m} {a:.3f}' for m, a in result['zero_shot'].items())}) | agreement "
              f"{result['agreement']:.3f}", flush=True)
        if detail:
            view = load_bound(child)[detail].eval()
            recalls = recall_per_class(child, detail, view)
            print(f"  {detail} val recall per class: " + ", ".join(f"{c} {r:.2f}" for c, r in recalls.items()),
                  flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    detail = None
    if "--detail" in args:
        at = args.index("--detail")
        detail = args[at + 1]
        del args[at:at + 2]
    main(args[0], args[1], args[2:], detail)
