"""Image-side encoders of the built-in models, one per signal kind.

* :class:`ConvEncoder` with ``spatial_dims=2``: 2D CNN for ``(B, C, H, W)`` images
  (X-ray, fundus, pathology tiles).
* :class:`ConvEncoder` with ``spatial_dims=3``: 3D CNN for ``(B, 1, D, H, W)`` volumes (CT).
* :class:`SignalEncoder`: 1D convolutional stem plus a small transformer for
  ``(B, leads, T)`` signals (ECG), standing in for the transformer of ECG-CLIP.

Each encoder globally pools its features and projects them to ``native_dim`` with a linear
layer named ``proj``; the output is not normalised (the CLIP model does that).

Names that peft LoRA can target are listed in each encoder's ``lora_targets``:
``proj`` (the final projection, every encoder), ``conv`` (every convolution of
:class:`ConvEncoder`, via peft's Conv2d/Conv3d LoRA layers) and ``qkv`` (the fused attention
input projection of :class:`SignalEncoder`, named as in a BLIP-style ViT). ``out`` (attention
output) also exists in :class:`SignalEncoder` for users who want more.

GroupNorm is used instead of BatchNorm so an embedding never depends on the other studies
in the batch and train/eval modes give the same normalisation (MGCA's BatchNorm heads
need ``eval()`` for single prompts; ours do not).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV_BY_DIMS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _group_count(channels: int) -> int:
    """Largest of 8, 4, 2, 1 dividing ``channels`` (GroupNorm needs an exact split)."""
    return next(groups for groups in (8, 4, 2, 1) if channels % groups == 0)


class ConvStage(nn.Module):
    """Strided convolution -> GroupNorm -> GELU; halves (or ``stride``-divides) each spatial size."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 2):
        super().__init__()
        conv_class = _CONV_BY_DIMS[spatial_dims]
        self.conv = conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(_group_count(out_channels), out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ConvEncoder(nn.Module):
    """A plain CNN: ``depth`` strided stages (channels double each stage), global mean pool, ``proj``.

    ``spatial_dims`` is 2 for images ``(B, C, H, W)`` and 3 for volumes ``(B, C, D, H, W)``.
    Every stage halves each spatial size, so inputs must be at least ``2**depth`` along each axis
    for the last stage to see more than one position.
    """

    lora_targets: tuple[str, ...] = ("conv", "proj")

    def __init__(self, spatial_dims: int, in_channels: int, width: int, depth: int, native_dim: int):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"ConvEncoder handles 2D or 3D inputs, not {spatial_dims}D")
        channels = [in_channels] + [width * 2 ** i for i in range(depth)]
        self.stages = nn.Sequential(*(
            ConvStage(spatial_dims, channels[i], channels[i + 1]) for i in range(depth)))
        self.proj = nn.Linear(channels[-1], native_dim)
        # Weights stay in the default layout: channels-last 3D weights run 1.3x faster here but make
        # a CT's embedding depend on the batch it is in (benchmarks/ct_encoder.py).

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(x)
        pooled = features.flatten(2).mean(dim=2)  # global average over every spatial position
        return self.proj(pooled)


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block with a fused ``qkv`` projection (a LoRA target) and a GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 2):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} attention heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, head_dim)
        attended = F.scaled_dot_product_attention(query, key, value)
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, width))
        return x + self.mlp(self.norm2(x))


def sinusoidal_positions(length: int, width: int, device: torch.device | None = None) -> Tensor:
    """The fixed sine/cosine position table of "Attention is all you need", ``(length, width)``.

    Fixed rather than learned so the encoder accepts any signal length (ECGs vary in duration).
    """
    if width % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {width}")
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32)
                          * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class SignalEncoder(nn.Module):
    """1D encoder for multi-lead signals ``(B, leads, T)``.

    Two convolutional stages with stride 4 turn T samples into about T/16 tokens (1000
    samples -> 63 tokens) of ``width`` channels, all leads mixed in the first convolution;
    then ``depth`` self-attention blocks, LayerNorm, mean over tokens and ``proj``.
    """

    lora_targets: tuple[str, ...] = ("qkv", "proj")

    def __init__(self, in_channels: int, width: int, depth: int, native_dim: int, heads: int = 4):
        super().__init__()
        self.stem = nn.Sequential(
            ConvStage(1, in_channels, width, kernel_size=7, stride=4),
            ConvStage(1, width, width, kernel_size=7, stride=4),
        )
        self.blocks = nn.Sequential(*(SelfAttentionBlock(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, native_dim)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.stem(x).transpose(1, 2)  # (B, T', width)
        tokens = tokens + sinusoidal_positions(tokens.shape[1], tokens.shape[2], tokens.device).to(tokens.dtype)
        tokens = self.norm(self.blocks(tokens))
        return self.proj(tokens.mean(dim=1))
