"""Milliseconds per forward + backward of the built-in CT encoder: contiguous vs channels-last 3D
convolution weights (``ConvEncoder`` keeps 3D weights channels-last), same weights, same batch.

    python benchmarks/ct_encoder.py            # demo sizes: 32 volumes of 1 x 32 x 64 x 64
    python benchmarks/ct_encoder.py --paper --batch 1   # the larger built-in sizes (240 x 480 x 480)
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from m3bind.data.transforms import default_preprocess
from m3bind.models.builtin import builtin_config
from m3bind.models.encoders import ConvEncoder


def as_contiguous(encoder: ConvEncoder) -> ConvEncoder:
    """A copy with the same weights in the default (contiguous) layout."""
    return copy.deepcopy(encoder).to(memory_format=torch.contiguous_format)


def milliseconds(encoder: nn.Module, volumes: torch.Tensor, repeats: int) -> float:
    encoder.train()
    encoder(volumes).sum().backward()  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.zero_grad()
        encoder(volumes).sum().backward()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="the larger built-in (non-demo) sizes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    demo = not args.paper
    config = builtin_config("ct", demo=demo)
    torch.manual_seed(0)
    encoder = ConvEncoder(3, config.in_channels, config.width, config.depth, config.native_dim)
    assert encoder.stages[1].conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    shape = default_preprocess("ct", demo=demo).shape
    volumes = torch.randn(args.batch, config.in_channels, *shape)
    plain = as_contiguous(encoder)
    with torch.no_grad():
        difference = (plain(volumes) - encoder(volumes)).abs().max().item()
    contiguous = milliseconds(plain, volumes, args.repeats)
    channels_last = milliseconds(encoder, volumes, args.repeats)
    print(f"CT encoder, batch {args.batch} x {tuple(volumes.shape[1:])}, {torch.get_num_threads()} threads")
    print(f"contiguous weights:     {contiguous:7.1f} ms per forward + backward")
    print(f"channels-last weights:  {channels_last:7.1f} ms ({contiguous / channels_last:.2f}x); "
          f"largest output difference {difference:.1e}")


if __name__ == "__main__":
    main()
