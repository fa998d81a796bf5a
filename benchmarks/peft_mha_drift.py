"""How far peft's LoRA on ``nn.MultiheadAttention`` moves the frozen base weights.

open_clip's CLIP towers (QuiltNet, BiomedCLIP's image side) compute q/k/v through the bare
``in_proj_weight`` parameter, so peft adds the LoRA delta into it before each forward and
subtracts it after. In float32, ``W + d - d`` is not exactly ``W``: the frozen weights pick up
rounding at every step whose LoRA weights changed. This measures that drift on one 512-wide
attention layer over the paper's 15,000 binding steps, with the LoRA weights moved a little each
step as an optimizer would.

    python benchmarks/peft_mha_drift.py            # about 1 minute on 2 cores
    python benchmarks/peft_mha_drift.py --steps 100

m3bind saves only the trained tensors (LoRA + heads) and rebuilds the base from the original
checkpoint, so a saved model carries the original weights; the drift only affects the training
run itself.
"""
from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, get_peft_model
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def relative_rms(delta: torch.Tensor, reference: torch.Tensor) -> float:
    return float(delta.pow(2).mean().sqrt() / reference.pow(2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Attention(args.width)
    original = model.attn.in_proj_weight.detach().clone()
    wrapped = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["attn"]))
    lora = [p for name, p in wrapped.named_parameters() if "lora_" in name]
    with torch.no_grad():
        for parameter in lora:
            parameter.normal_(0.0, 0.02)
    base = wrapped.base_model.model.attn.base_layer
    tokens = torch.randn(2, 16, args.width)
    report = {s for s in (1, 10, 100, 1000, 5000, args.steps) if s <= args.steps}
    print(f"in_proj_weight {tuple(original.shape)}, mean |W| {original.abs().mean():.3e}")
    for step in range(1, args.steps + 1):
        with torch.no_grad():
            for parameter in lora:
                parameter.add_(torch.randn_like(parameter) * 1e-4)
            wrapped(tokens)
        if step in report:
            delta = base.in_proj_weight.detach() - original
            print(f"step {step:6d}: max |dW| {delta.abs().max():.3e}, relative RMS {relative_rms(delta, original):.3e}")


if __name__ == "__main__":
    main()
