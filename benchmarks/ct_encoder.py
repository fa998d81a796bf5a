"""The built-in CT encoder with contiguous (default) vs channels-last 3D convolution weights: speed,
and whether a volume's embedding depends on the batch it is embedded in.

    python benchmarks/ct_encoder.py            # demo sizes: 32 volumes of 1 x 32 x 64 x 64

Channels-last is faster with oneDNN, but on volumes with a padded border (what CT preprocessing
produces: -1 outside the resampled scan) its batched outputs differ from one-at-a-time outputs
about 100x more than the contiguous layout's, so the same study would get a different embedding
in an index built in batches than when searched alone. ``ConvEncoder`` keeps the default layout.
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


def milliseconds(encoder: nn.Module, volumes: torch.Tensor, repeats: int) -> float:
    encoder.train()
    encoder(volumes).sum().backward()  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        encoder.zero_grad()
        encoder(volumes).sum().backward()
    return (time.perf_counter() - start) / repeats * 1000


@torch.no_grad()
def batch_dependence(encoder: nn.Module, volumes: torch.Tensor) -> float:
    """Largest |embedding in the batch - embedding alone| over the volumes."""
    encoder.eval()
    alone = torch.cat([encoder(volumes[i:i + 1]) for i in range(len(volumes))])
    return (encoder(volumes) - alone).abs().max().item()


def padded_volumes(count: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Random scans inside a -1 border, like preprocessed CTs."""
    volumes = torch.full((count, 1, *shape), -1.0)
    d, h, w = shape
    volumes[:, :, d // 8:d - d // 8, h // 8:h - h // 8, w // 8:w - w // 8] = \
        torch.rand(count, 1, d - 2 * (d // 8), h - 2 * (h // 8), w - 2 * (w // 8)) * 1.6 - 1.0
    return volumes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    config = builtin_config("ct", demo=True)
    torch.manual_seed(0)
    contiguous = ConvEncoder(3, config.in_channels, config.width, config.depth, config.native_dim)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last_3d)
    shape = default_preprocess("ct", demo=True).shape
    volumes = torch.randn(args.batch, config.in_channels, *shape)
    padded = padded_volumes(8, shape)
    print(f"CT encoder, batch {args.batch} x {tuple(volumes.shape[1:])}, {torch.get_num_threads()} threads")
    for name, encoder in (("contiguous (default)", contiguous), ("channels-last", channels_last)):
        print(f"{name:22s} {milliseconds(encoder, volumes, args.repeats):7.1f} ms per forward + backward; "
              f"padded volumes, batch vs alone: {batch_dependence(encoder, padded):.1e}")


if __name__ == "__main__":
    main()
