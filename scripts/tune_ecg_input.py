"""Millivolts or per-lead z-scores for the built-in ECG model? Chosen on VALIDATION data.

Pretrains a second built-in ECG model on the other input (the other models are the experiment's
own pretrained ones), binds all modalities again, and scores both bindings like
scripts/tune_binding.py: concept AUC on the paired validation patients, expert zero-shot on the
val splits, text agreement. Test is never read. Writes into <output_dir>/tuning/ecg-<normalize>.

Usage: python scripts/tune_ecg_input.py OUTPUT_DIR/config.yaml [per_lead_zscore|none]
"""
import sys
import time

import numpy as np

from m3bind.experiment import Experiment
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import bind_dir
from m3bind.stages.bind import run_bind
from m3bind.stages.pretrain import run_pretrain
from tune_binding import score


def other_input_experiment(exp: Experiment, normalize: str) -> Experiment:
    """``exp`` with the ECG model retrained on ``normalize`` input; every other modality reuses
    the experiment's pretrained model (as :func:`child_experiment` sets them up)."""
    child = child_experiment(exp, exp.out_dir / "tuning" / f"ecg-{normalize}", {})
    ecg = exp.cfg.modalities["ecg"]
    modalities = {**child.cfg.modalities,
                  "ecg": ecg.model_copy(update={"preprocess": {**ecg.preprocess, "normalize": normalize}})}
    return Experiment(child.cfg.model_copy(update={"modalities": modalities}), exp.config_path,
                      cache_dir=exp.cache_dir)


def line(name: str, result: dict, seconds: float) -> str:
    aucs = result["concept_auc"]
    return (f"{name} ({seconds:.0f} s): concept AUC mean {np.mean(list(aucs.values())):.3f} "
            f"({', '.join(f'{p} {a:.3f}' for p, a in aucs.items())}) | zero-shot mean "
            f"{np.nanmean(list(result['zero_shot'].values())):.3f} "
            f"({', '.join(f'{m} {a:.3f}' for m, a in result['zero_shot'].items())}) | agreement {result['agreement']:.3f}")


def main(config: str, normalize: str) -> None:
    exp = Experiment.from_file(config)
    current = exp.preprocess("ecg").normalize
    print(line(f"ecg input {current} (the config)", score(exp), 0), flush=True)
    other = other_input_experiment(exp, normalize)
    start = time.perf_counter()
    if not (bind_dir(other) / "model" / "bound.json").exists():
        run_pretrain(other, ["ecg"], log=lambda _: None)
        run_bind(other, log=lambda _: None)
    print(line(f"ecg input {normalize}", score(other), time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "per_lead_zscore")
