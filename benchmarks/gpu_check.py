"""GPU check: the quick demo and a paper-sized binding step run on the GPU; speed and memory as a table.

    python benchmarks/gpu_check.py [--steps 5] [--mixed-precision no|bf16] [--skip-demo] [--work DIR]

On a CUDA machine:

1. ``m3bind demo --quick`` (the same ``run_demo`` call), timed, with its peak GPU memory and its
   stage log (without its CPU-only search index where faiss is not installed);
2. a binding run through the adapters on ``configs/paper.yaml``'s five published architectures
   at their real sizes (randomly initialised checkpoints in the original formats, written to
   the work folder; ~4 GB): MGCA ViT-B/16 at 224 px, CT-CLIP on 240 x 480 x 480 volumes,
   FLAIR ResNet-50 at 512 px, ECG-CLIP on 10 s at 500 Hz, QuiltNet ViT-B/32, BERT-base text
   towers with LoRA, D = 512; the paper's batches: 72 image-text pairs per modality (CT-CLIP 8)
   and 64 alignment texts. The studies are random tensors of the published preprocessed shapes.
   One warm-up step, then ``--steps`` timed steps.

Nothing is moved by hand: the config's ``device`` (``auto``) decides, as for a user. While the
demo runs, and during the binding run's set-up and first step, every module call checks that
its parameters, buffers and tensor inputs are on the GPU; afterwards every bound parameter is
checked too. Anything found elsewhere is listed and the script exits with status 1 (after
printing the table). Without CUDA it says so, skips the demo, and runs the same binding step
at ``configs/paper-tiny.yaml``'s sizes on the CPU (tests/test_benchmarks_cpu.py runs that).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from binding_bench import DeviceWatch, StepClock, paper_setup, run_binding


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def peak_gpu_gib(cuda: bool) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} GiB" if cuda else "– (no CUDA)"


def run_quick_demo(work: Path, watch: DeviceWatch) -> dict[str, str]:
    from m3bind.output import quiet_libraries
    from m3bind.stages.demo import run_demo

    quiet_libraries()
    skipped = skip_index_without_faiss()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    watch.start()
    try:
        run_demo(work / "demo", patients=400, seed=0, quick=True, log=lambda message: print(f"  demo: {message}"))
    finally:
        watch.stop()
    seconds = time.perf_counter() - start
    if torch.cuda.max_memory_allocated() == 0:
        watch.problems.append("the quick demo allocated no GPU memory: its stages ran on the CPU")
    stages = "cohort, 5 x pretrain, bind, distill, eval" + ("; no search index: faiss missing" if skipped else ", index")
    return {"run": f"`m3bind demo --quick` ({stages})", "steps/s": "–",
            "samples/s": "–", "peak GPU memory": peak_gpu_gib(True), "wall": f"{seconds:.0f} s"}


def skip_index_without_faiss() -> bool:
    """Leave out the demo's last stage, its search index, where faiss is not installed.

    The GPU machine's image has no faiss and the device tool's carry limit leaves no room for its
    wheel (benchmarks/gpu_wheels.sh); the index is built on the CPU in any case.
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        import m3bind.stages.demo as demo

        print("faiss is not installed: the quick demo runs without its search index (a CPU-only stage)")
        demo.index_test_studies = lambda exp, folder, workers: Path(folder) / "(skipped: no faiss)"
        return True
    return False


def run_binding_step(work: Path, cuda: bool, steps: int, mixed_precision: str, watch: DeviceWatch) -> dict[str, str]:
    from m3bind.models.adapters.random_checkpoints import PUBLISHED, TINY

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    watch.start()
    try:
        setup = (paper_setup(work / "paper", "paper.yaml", PUBLISHED, mixed_precision=mixed_precision) if cuda else
                 paper_setup(work / "paper-tiny", "paper-tiny.yaml", TINY, mixed_precision=mixed_precision))
        if setup.device != watch.device:
            watch.problems.append(f"the config's device resolved to {setup.device}, not {watch.device}")
        clock = StepClock(setup.device)
        clock.at_step[1] = [watch.stop]  # set-up and the first step are watched; timed steps run bare
        run_binding(setup, steps + 2, work / "bind-run", clock)
    finally:
        watch.stop()
    watch.check_parameters(setup.bound)
    per_step = clock.seconds_per_step(1, steps + 1)
    batches = ", ".join(f"{m} {min(setup.bind.image_batch_size, len(s))}" for m, s in setup.train.items())
    precision = {"no": "fp32", "bf16": "bf16 autocast"}[mixed_precision]
    return {"run": f"binding step, {setup.name} ({batches}; text {setup.bind.text_batch_size}; "
                   f"{precision}; {steps} timed steps)",
            "steps/s": f"{1 / per_step:.3f}", "samples/s": f"{setup.samples_per_step() / per_step:.1f}",
            "peak GPU memory": peak_gpu_gib(cuda),
            "wall": f"{time.perf_counter() - start:.0f} s incl. writing checkpoints and set-up"}


def markdown_table(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="timed binding steps (default: 5 on GPU, 2 on CPU)")
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--skip-demo", action="store_true", help="only the binding step")
    parser.add_argument("--work", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    steps = args.steps or (5 if cuda else 2)
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    else:
        print("no CUDA device: skipping the quick demo and running the tiny CPU version of the binding step "
              "(configs/paper-tiny.yaml sizes); nothing here measures a GPU")
    rows, problems, calls = [], [], 0
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        if cuda and not args.skip_demo:
            watch = DeviceWatch(device)
            rows.append(run_quick_demo(work, watch))
            problems += [f"demo: {p}" for p in watch.problems]
            calls += watch.calls
        watch = DeviceWatch(device)
        rows.append(run_binding_step(work, cuda, steps, args.mixed_precision, watch))
        problems += [f"binding: {p}" for p in watch.problems]
        calls += watch.calls
    if calls == 0:
        problems.append("the device watch saw no module call, so nothing was checked")
    for row in rows:
        row["peak RSS"] = f"{peak_rss_gib():.2f} GiB (process)"
    print(markdown_table(rows))
    if problems:
        print(f"\nFAILED: {len(problems)} kinds of tensors were not on {device}:", file=sys.stderr)
        for problem in problems[:40]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(f"\n{calls} module calls checked: every parameter, buffer and tensor input was on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
