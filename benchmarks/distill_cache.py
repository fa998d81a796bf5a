"""Seconds per SESKD step with cached vs recomputed teacher/image embeddings.

    python benchmarks/distill_cache.py m3bind-demo/config.yaml [steps, default 30]

Needs a finished binding stage in that experiment (e.g. after `m3bind demo`). Both runs do the
same phase-B steps (the expensive phase: KD + contrastive for every modality) from the same
starting student; the first step's loss is printed for both to show they compute the same thing.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


from m3bind.experiment import Experiment
from m3bind.models.student import build_student
from m3bind.stages.artifacts import load_bound
from m3bind.train.bind import balance_for
from m3bind.train.distill import distill_student


def seconds_per_step(exp: Experiment, cache: bool, steps: int) -> tuple[float, float, float]:
    bound = load_bound(exp)
    names = list(bound)
    train = {m: exp.studies(m, "train") for m in names}
    corpus = [t for m in names for t in train[m].texts]
    student = build_student(exp.cfg.distill.student, corpus, exp.cfg.shared_dim, seed=0)
    cfg = exp.cfg.distill.model_copy(update={"kd_steps": 0, "contrastive_steps": steps,
                                             "cache_embeddings": cache, "checkpoint_every": 10 ** 6})
    probabilities = balance_for({m: len(train[m]) for m in names}, exp.cfg.bind).probabilities
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = distill_student(student, bound, train, cfg, Path(run_dir), probabilities=probabilities,
                                 tensorboard=False)
    total = time.perf_counter() - start
    return total / steps, total, result.history[0]["loss"]


def main() -> None:
    exp = Experiment.from_file(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    # Two run lengths separate the one-off cost (building the caches) from the cost per step.
    rows = {}
    for cache in (True, False):
        _, short_total, first_loss = seconds_per_step(exp, cache, 5)
        _, long_total, _ = seconds_per_step(exp, cache, 5 + steps)
        per_step = (long_total - short_total) / steps
        rows[cache] = (per_step, short_total - 5 * per_step, first_loss)
    print(f"phase-B steps, batch {exp.cfg.distill.batch_size} per modality, {len(exp.modalities)} modalities")
    for cache, (per_step, setup, loss) in rows.items():
        name = "cached" if cache else "recomputed"
        print(f"{name:>10}: {per_step:.3f} s/step, one-off {setup:.1f} s, first-step loss {loss:.5f}")
    print(f"per-step speed-up from caching: {rows[False][0] / rows[True][0]:.2f}x")


if __name__ == "__main__":
    main()
