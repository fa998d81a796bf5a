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
backward matmuls, convolutions and attention, the CPU's fused attention kernels included; the
optimizer's and the normalisations' elementwise work is not counted). The peak is the best of several large ``torch.mm`` timings in the step's dtype, on
the same device, in the same process, measured just before and again just after the timed
steps (MFU uses their mean; both are printed). On a CPU, MFU is given by the wall clock and by
the process's CPU time: on a machine shared with other work the second leaves out the time
others held the cores (run with OMP_NUM_THREADS=1 there: two threads that wait for each other
on a busy machine make small operators many times slower).
``--profile`` adds a third run that lists the operators one step spends its time in.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from binding_bench import StepClock, demo_setup, paper_setup, run_binding


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5, trials: int = 3
                ) -> dict[str, float]:
    """FLOP/s of (n x n) @ (n x n) products: the best of ``trials`` timings of ``repeats``, by wall
    clock and by this process's CPU time."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up (kernel choice, thread pool)
    best = {"wall": float("inf"), "cpu": float("inf")}
    for _ in range(trials):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = {"wall": min(best["wall"], time.perf_counter() - wall), "cpu": min(best["cpu"], time.process_time() - cpu)}
    return {clock: 2 * n ** 3 * repeats / seconds for clock, seconds in best.items()}


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                            **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# FlopCounterMode knows the GPU attention kernels only; the CPU's fused one does the same matmuls.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


class OperatorCounter(TorchDispatchMode):
    """Counts the ATen operators a step dispatches, forward and backward: on a GPU each one is at
    least one kernel launch, so at small batches this count, not the FLOPs, sets the step time."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def counted_flops(setup, steps: int, run_dir: Path) -> tuple[float, dict[str, float], float]:
    """FLOPs of steps 2 .. steps + 1 (per step), total and by operator, and operators per step."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    operators = OperatorCounter()
    clock = StepClock(setup.device)
    clock.at_step[1] = [counter.__enter__, operators.__enter__]
    clock.at_step[steps + 1] = [lambda: operators.__exit__(None, None, None),
                                lambda: counter.__exit__(None, None, None)]
    run_binding(setup, steps + 2, run_dir, clock)
    by_op = {str(op): count / steps for op, count in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / steps, by_op, operators.count / steps


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
    parser.add_argument("--studies", type=int, default=256, help="--models demo: training studies per modality "
                        "(each one's report is encoded once by MiniLM before timing)")
    parser.add_argument("--text-backbone", choices=["minilm", "scratch"], default="minilm",
                        help="--models demo: the built-in text towers (the demo's frozen MiniLM + MLP, or small BERTs)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if args.models == "demo":
            setup = demo_setup(image_batch=args.image_batch, text_backbone=args.text_backbone,
                               studies_per_modality=args.studies)
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
        peak_before = matmul_peak(setup.device, dtype, size)
        clock = StepClock(setup.device)
        run_binding(setup, args.steps + 2, work / "timed", clock)
        peak_after = matmul_peak(setup.device, dtype, size)
        flops, by_op, operators = counted_flops(setup, args.steps, work / "counted")
        table = profile_one_step(setup, work / "profiled") if args.profile else None

    batches = ", ".join(f"{m} {min(setup.bind.image_batch_size, len(s))}" for m, s in setup.train.items())
    on_cpu = setup.device.type == "cpu"
    threads = f" ({torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f})" if on_cpu else ""
    print(f"binding step: {setup.name} models on {setup.device}{threads}; image batches {batches}; text batch "
          f"{setup.bind.text_batch_size}; {dtype}; {args.steps} steps timed and counted; "
          f"{flops / 1e9:.3f} GFLOP per step (forward + backward); {operators:.0f} operators dispatched per step")
    print("| clock | s per step | achieved | matmul peak (mean of before / after) | MFU |")
    print("|---|---|---|---|---|")
    # On a CPU shared with other processes the wall clock also counts the time they held the
    # cores; the process's CPU time does not, for the steps and the peak alike.
    for clock_name in ("wall", "cpu") if on_cpu else ("wall",):
        seconds = clock.seconds_per_step(1, args.steps + 1, cpu_time=clock_name == "cpu")
        before, after = peak_before[clock_name], peak_after[clock_name]
        peak = (before + after) / 2
        achieved = flops / seconds
        label = "wall clock" if clock_name == "wall" else "process CPU time"
        print(f"| {label} | {seconds:.4f} | {achieved / 1e9:.1f} GFLOP/s | {peak / 1e9:.1f} GFLOP/s ({size}x{size} mm; "
              f"{before / 1e9:.1f} / {after / 1e9:.1f}) | **{achieved / peak:.1%}** |")
    print("FLOPs by operator: " + ", ".join(f"{op} {count / flops:.0%}" for op, count in
                                           sorted(by_op.items(), key=lambda item: -item[1])))
    if table is not None:
        print(table)


if __name__ == "__main__":
    main()
