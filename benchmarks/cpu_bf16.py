"""Is bf16 autocast worth it on this CPU? Milliseconds per forward + backward of each demo built-in
model's image tower and text tower, float32 against ``torch.autocast("cpu", torch.bfloat16)``.

    python benchmarks/cpu_bf16.py [--batch 32] [--repeats 5]

``bind.mixed_precision: auto`` picks bf16 only on a CUDA GPU; this measures what the CPU would
gain (CPUs with AMX run large bf16 matrix products several times faster than float32, but the
demo's towers are small and some of their kernels have no fast bf16 path).
"""
from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from m3bind.data.transforms import default_preprocess
from m3bind.models.builtin import build_builtin_model

REPORT = ("Findings: moderate cardiomegaly, which may reflect left ventricular hypertrophy. No pleural "
          "effusion. Impression: enlarged heart.")


def input_shape(modality: str) -> tuple[int, ...]:
    spec = default_preprocess(modality, demo=True)
    model_shape = {"xray": lambda: (1, spec.size, spec.size), "retina": lambda: (3, spec.size, spec.size),
                   "pathology": lambda: (3, spec.size, spec.size), "ct": lambda: (1, *spec.shape),
                   "ecg": lambda: (12, int(spec.fs * spec.duration_s))}
    return model_shape[modality]()


def milliseconds(step, repeats: int, bf16: bool) -> float:
    context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    with context:
        step()  # warm-up: oneDNN picks its kernels on the first call
        start = time.perf_counter()
        for _ in range(repeats):
            step()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| model | tower | float32 ms | bf16 autocast ms | speed-up |")
    print("|---|---|---|---|---|")
    for modality in ("xray", "ct", "retina", "ecg", "pathology"):
        torch.manual_seed(0)
        model = build_builtin_model(modality, [REPORT])
        model.train()
        images = torch.randn(args.batch, *input_shape(modality))
        tokens = model.tokenize([REPORT] * args.batch)
        steps = {"image": lambda: model.encode_image(images).sum().backward(),
                 "text": lambda: model.encode_text(tokens).sum().backward()}
        for tower, step in steps.items():
            full = milliseconds(step, args.repeats, bf16=False)
            half = milliseconds(step, args.repeats, bf16=True)
            print(f"| {modality} | {tower} | {full:.1f} | {half:.1f} | {full / half:.2f}x |")


if __name__ == "__main__":
    main()
