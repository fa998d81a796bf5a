"""Does binding over N accelerate processes follow the single-process loss curve?

    python benchmarks/bind_processes.py OUT.csv                          # one process
    torchrun --nproc_per_node 2 benchmarks/bind_processes.py OUT.csv     # two processes (gloo, CPU)

On a CPU-only machine `accelerate launch --cpu --num_processes 2` starts ONE process unless
mpirun is set up (`--mpirun_hostfile`); torchrun starts real processes that accelerate's
Accelerator joins (MULTI_CPU). On GPUs use `accelerate launch --multi_gpu --num_processes N`.

Both runs bind the same two tiny built-in models on the same synthetic data and write the
per-step total loss; tests/test_bind_processes.py compares the curves.
"""
from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_bind import _bound, _studies  # noqa: E402  (tiny models and data shared with the tests)

from m3bind.config import BindConfig  # noqa: E402
from m3bind.train.bind import bind_models  # noqa: E402


def main(out: str, steps: int = 8) -> None:
    torch.manual_seed(0)
    bound = _bound()
    train = {m: _studies(m, n=16) for m in bound}
    cfg = BindConfig(steps=steps, lr=5e-3, warmup_steps=1, image_batch_size=8, text_batch_size=8,
                     checkpoint_every=steps)
    with tempfile.TemporaryDirectory() as run_dir:
        result = bind_models(bound, train, cfg, Path(run_dir), heldout_texts=["normal"], tensorboard=False)
    import accelerate

    state = accelerate.PartialState()
    if state.is_main_process:
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss", "clip", "text_mse", "processes"])
            for row in result.history:
                writer.writerow([row["step"], row["loss"], row["clip"], row["text_mse"], state.num_processes])


if __name__ == "__main__":
    main(sys.argv[1])
