"""Model-FLOPs utilisation of a binding step: counted FLOPs per step / step time, against this machine's matmul peak.

    python benchmarks/mfu.py --models demo [--steps 3]
    python benchmarks/mfu.py --models paper --image-batch 4 --text-batch 8    # published architectures

``--models demo``: the demo's five built-in models with its binding settings (image batch 24,
text batch 32). ``paper-tiny`` / ``paper``: configs/paper-tiny.yaml / configs/paper.yaml on
randomly initialised checkpoints in the published formats (see binding_bench.py); batch
sizes from the config unless given. Studies are random tensors of the preprocessed shapes.

Two runs of the library's binding loop with the same seed (so the same batches): the first
times steps 2 .. steps + 1 (step 1 warms up; the last step also checkpoints), the second counts
the FLOPs of those same steps with ``torch.utils.flop_counter.FlopCounterMode`` (forward +
backward matmuls, convolutions and attention; the optimizer's elementwise work is not
counted). The peak is the best of several large ``torch.mm`` timings in the step's dtype, on
the same device, in the same process, just before the runs. ``--profile`` adds a third run
that lists the operators one step spends its time in.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from binding_bench import StepClock, demo_setup, paper_setup, run_binding


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5, trials: int = 3) -> float:
    """FLOP/s of the best of ``trials`` timings of ``repeats`` (n x n) @ (n x n) products."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up (kernel choice, thread pool)
    best = float("inf")
    for _ in range(trials):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 * repeats / best


def counted_flops(setup, steps: int, run_dir: Path) -> tuple[float, dict[str, float]]:
    """FLOPs of steps 2 .. steps + 1 (per step), total and by operator."""
    counter = FlopCounterMode(display=False)
    clock = StepClock(setup.device)
    clock.at_step[1] = [counter.__enter__]
    clock.at_step[steps + 1] = [lambda: counter.__exit__(None, None, None)]
    run_binding(setup, steps + 2, run_dir, clock)
    by_op = {str(op): count / steps for op, count in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / steps, by_op


def profile_one_step(setup, run_dir: Path, rows: int = 12) -> str:
    """The operators of step 2 by their own time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
    profiler = profile(activities=activities)
    clock = StepClock(setup.device)
    clock.at_step[1] = [profiler.__enter__]
    clock.at_step[2] = [lambda: profiler.__exit__(None, None, None)]
    run_binding(setup, 3, run_dir, clock)
    sort = "self_cuda_time_total" if setup.device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=rows)


def main(argv: list[str] | None = None) -> None:
    from m3bind.models.adapters.random_checkpoints import PUBLISHED, TINY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["demo", "paper-tiny", "paper"], default="demo")
    parser.add_argument("--steps", type=int, default=3, help="timed (and counted) steps after the warm-up step")
    parser.add_argument("--image-batch", type=int, default=None)
    parser.add_argument("--text-batch", type=int, default=None)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--matmul-size", type=int, default=None, help="side of the peak-measuring matmul "
                                                                       "(default 2048 on CPU, 8192 on GPU)")
    parser.add_argument("--profile", action="store_true", help="also list the operators of one step")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.models == "demo":
            setup = demo_setup(image_batch=args.image_batch)
            if args.text_batch is not None:
                setup.bind = setup.bind.model_copy(update={"text_batch_size": args.text_batch})
            if args.mixed_precision != "no":
                setup.bind = setup.bind.model_copy(update={"mixed_precision": args.mixed_precision})
        else:
            config, sizes = ("paper.yaml", PUBLISHED) if args.models == "paper" else ("paper-tiny.yaml", TINY)
            setup = paper_setup(work / "paper", config, sizes, image_batch=args.image_batch,
                                text_batch=args.text_batch, mixed_precision=args.mixed_precision)
        dtype = torch.bfloat16 if setup.bind.mixed_precision == "bf16" else torch.float32
        size = args.matmul_size or (8192 if setup.device.type == "cuda" else 2048)
        peak = matmul_peak(setup.device, dtype, size)

        clock = StepClock(setup.device)
        run_binding(setup, args.steps + 2, work / "timed", clock)
        seconds = clock.seconds_per_step(1, args.steps + 1)
        flops, by_op = counted_flops(setup, args.steps, work / "counted")
        table = profile_one_step(setup, work / "profiled") if args.profile else None

    achieved = flops / seconds
    batches = ", ".join(f"{m} {min(setup.bind.image_batch_size, len(s))}" for m, s in setup.train.items())
    threads = torch.get_num_threads() if setup.device.type == "cpu" else None
    print(f"binding step: {setup.name} models on {setup.device}"
          f"{f' ({threads} threads, load average {os.getloadavg()[0]:.1f})' if threads else ''}; image batches "
          f"{batches}; text batch {setup.bind.text_batch_size}; {dtype}; {args.steps} steps timed and counted")
    print("| FLOPs per step (fwd+bwd) | s per step | achieved | matmul peak | MFU |")
    print("|---|---|---|---|---|")
    print(f"| {flops / 1e9:.1f} GFLOP | {seconds:.3f} | {achieved / 1e9:.1f} GFLOP/s | {peak / 1e9:.1f} GFLOP/s "
          f"({size}x{size} mm) | **{achieved / peak:.1%}** |")
    print("FLOPs by operator: " + ", ".join(f"{op} {count / flops:.0%}" for op, count in
                                           sorted(by_op.items(), key=lambda item: -item[1])))
    if table is not None:
        print(table)


if __name__ == "__main__":
    main()
