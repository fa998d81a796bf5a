"""Choose binding settings on VALIDATION data: bind once per setting and compare on the paired
validation set and the validation splits; test is never read.

Each setting binds from the experiment's pretrained models (``pretrain`` must have run) into
``<output_dir>/tuning/<setting>`` and is scored on:
  concept AUC   cross-modal retrieval on the paired validation patients, mean over the pairs
  zero-shot     expert-prompt zero-shot accuracy on each modality's validation split, mean
  agreement     text agreement of the bound text encoders on held-out reports

Usage: python scripts/tune_binding.py OUTPUT_DIR/config.yaml lambda_text 10 30 100 300
       (any bind key with a numeric value: lambda_text, lr, steps, ...)
"""
import sys
import time

import numpy as np

from m3bind.eval.protocol import TUNING_SPLIT, heldout_texts, modality_zero_shot, paired_query_scores, retrieval_pairs
from m3bind.experiment import Experiment
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import bind_dir, load_bound
from m3bind.stages.bind import run_bind
from m3bind.train.bind import text_agreement


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


def main(config: str, key: str, values: list[str]) -> None:
    exp = Experiment.from_file(config)
    current = getattr(exp.cfg.bind, key)
    print(f"{key}: the config has {current}; validation only (paired val patients, val splits)", flush=True)
    for raw in values:
        value = type(current)(float(raw)) if not isinstance(current, bool) else raw == "true"
        child = child_experiment(exp, exp.out_dir / "tuning" / f"{key}-{raw}", {key: value})
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


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
