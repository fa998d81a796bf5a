"""CTViT, CT-CLIP's volume encoder (``transformer_maskgit/ctvit.py``, ``attention.py``), encoder half only.

Written from the original's description with its module names, so the ``visual_transformer.*``
keys of ``CT-CLIP_v2.pt`` load one to one. The computation, in order:

1. tubelets of ``temporal_patch_size`` x ``patch_size`` x ``patch_size`` voxels
   (``b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)``), LayerNorm, Linear, LayerNorm;
2. spatial transformer over the h*w tokens of each depth slab, with a continuous relative
   position bias (log-spaced 2D offsets through a small MLP, one value per head);
3. temporal transformer over the t slabs at each (h, w) position;
4. cosine-similarity vector quantisation: each token is replaced by the codebook row with the
   highest cosine similarity (``vector-quantize-pytorch==1.1.2``, as CT-CLIP pins it).

Each transformer layer is ``x = PEG(x) + x; x = attention(x) + x; x = feed-forward(x) + x``
followed by a final bias-less LayerNorm. Details kept on purpose because the weights were
trained with them:

* attention normalises its input for the queries only; keys and values are computed from
  the un-normalised input. q and k are L2-normalised, scaled per dimension (``q_scale``,
  ``k_scale``) and their dot product multiplied by 8;
* the PEG (depthwise 3x3x3 convolution, causal padding in depth) always reshapes the token
  sequence as (b, t, h, w), also inside the temporal transformer where the tokens are ordered
  (b, h, w, t);
* the feed-forward is GEGLU with hidden width ``int(4 * 2/3 * dim)``, no biases.

Unlike the original, nothing is hard-coded to CUDA, and the quantiser passes gradients
straight through to the encoder (its output values are unchanged) so LoRA layers inside the
transformers can be trained; the original blocks gradients in eval mode. The decoder parts
(``to_pixels*``, ``to_patch_emb_first_frame``) are not needed for embeddings and not built.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator
from torch import Tensor, nn

# Attention logits are cosine similarities times this constant (attention.py: scale = 8).
ATTENTION_SCALE = 8.0
FEED_FORWARD_MULT = 4
LEAKY_RELU_SLOPE = 0.1


class CTViTConfig(BaseModel):
    """CTViT sizes; defaults are CT-CLIP's (``scripts/run_zero_shot.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: PositiveInt = 512
    codebook_size: PositiveInt = 8192
    image_size: PositiveInt = 480
    patch_size: PositiveInt = 20
    temporal_patch_size: PositiveInt = 10
    spatial_depth: PositiveInt = 4
    temporal_depth: PositiveInt = 4
    dim_head: PositiveInt = 32
    heads: PositiveInt = 8
    channels: PositiveInt = 1

    @model_validator(mode="after")
    def _patches_tile_the_image(self) -> CTViTConfig:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        return self

    @property
    def grid_size(self) -> int:
        """Patches along each image side (24 for CT-CLIP)."""
        return self.image_size // self.patch_size


class BiaslessLayerNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias (stored as the buffer ``beta``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class GEGLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


def feed_forward(dim: int, dropout: float = 0.0) -> nn.Sequential:
    """GEGLU feed-forward; Sequential indices 0, 1 and 4 carry weights, as in the original."""
    inner = int(FEED_FORWARD_MULT * (2 / 3) * dim)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner * 2, bias=False), GEGLU(), nn.Dropout(dropout),
                         nn.Linear(inner, dim, bias=False))


class PEG(nn.Module):
    """Position-generating depthwise 3D convolution, causal along depth (pads 2 slabs in front)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int]) -> Tensor:
        original_shape = x.shape
        grid = x.reshape(*video_shape, -1).permute(0, 4, 1, 2, 3)  # (b, d, t, h, w); see module docstring
        grid = self.dsconv(F.pad(grid, (1, 1, 1, 1, 2, 0)))
        return grid.permute(0, 2, 3, 4, 1).reshape(original_shape)


class Attention(nn.Module):
    """CTViT self-attention (cosine-sim, learned per-dimension q/k scales, optional null key/values)."""

    def __init__(self, dim: int, dim_head: int, heads: int, num_null_kv: int = 0, dropout: float = 0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.num_null_kv = num_null_kv
        self.norm = BiaslessLayerNorm(dim)
        # Used only for cross-attention contexts, which CTViT's encoder never has; kept for the key layout.
        self.context_norm = BiaslessLayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(heads, 2 * num_null_kv, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.attn_dropout = nn.Dropout(dropout)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        keys_values_input = x  # keys and values see the un-normalised input
        query = self._heads(self.to_q(self.norm(x)))
        key, value = (self._heads(part) for part in self.to_kv(keys_values_input).chunk(2, dim=-1))
        if self.num_null_kv:
            # null_kv rows alternate key, value: 'h (n r) d' with r = 2.
            null = self.null_kv.view(self.heads, self.num_null_kv, 2, -1).expand(x.shape[0], -1, -1, -1, -1)
            key = torch.cat([null[..., 0, :], key], dim=2)
            value = torch.cat([null[..., 1, :], value], dim=2)
        query = F.normalize(query, dim=-1) * self.q_scale
        key = F.normalize(key, dim=-1) * self.k_scale
        scores = query @ key.transpose(-1, -2) * ATTENTION_SCALE
        if attn_bias is not None:
            scores = scores + F.pad(attn_bias, (self.num_null_kv, 0))
        weights = self.attn_dropout(scores.softmax(dim=-1))
        out = (weights @ value).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out(out)


class Transformer(nn.Module):
    """``depth`` layers of [PEG, attention, (no cross-attention), feed-forward] and a final norm."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int):
        super().__init__()
        # Index 2 is the original's cross-attention slot, None in CTViT; kept so indices match the keys.
        self.layers = nn.ModuleList(
            nn.ModuleList([PEG(dim), Attention(dim, dim_head, heads), None, feed_forward(dim)])
            for _ in range(depth))
        self.norm_out = BiaslessLayerNorm(dim)

    def forward(self, x: Tensor, video_shape: tuple[int, int, int, int], attn_bias: Tensor | None = None) -> Tensor:
        for peg, self_attention, _cross_attention, ff in self.layers:
            x = peg(x, video_shape) + x
            x = self_attention(x, attn_bias) + x
            x = ff(x) + x
        return self.norm_out(x)


class ContinuousPositionBias(nn.Module):
    """Relative position bias from log-spaced 2D offsets through an MLP (SwinV2-style)."""

    def __init__(self, dim: int, heads: int, layers: int = 2):
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(LEAKY_RELU_SLOPE))])
        for _ in range(layers - 1):
            self.net.append(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(LEAKY_RELU_SLOPE)))
        self.net.append(nn.Linear(dim, heads))

    def forward(self, height: int, width: int, device: torch.device) -> Tensor:
        """``(heads, h*w, h*w)`` additive attention bias."""
        rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                    indexing="ij")
        grid = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1)
        offsets = (grid[:, None, :] - grid[None, :, :]).float()
        bias = torch.sign(offsets) * torch.log(offsets.abs() + 1)
        for layer in self.net:
            bias = layer(bias)
        return bias.permute(2, 0, 1)


class CosineSimCodebook(nn.Module):
    """The codebook buffers of vector-quantize-pytorch 1.1.2 (``initted``, ``cluster_size``, ``embed``)."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(1, codebook_size))
        self.register_buffer("embed", F.normalize(torch.randn(1, codebook_size, dim), dim=-1))


class VectorQuantizer(nn.Module):
    """Cosine-similarity nearest-code quantisation (inference path; the codebook is never updated)."""

    def __init__(self, dim: int, codebook_size: int):
        super().__init__()
        self._codebook = CosineSimCodebook(dim, codebook_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """``(..., dim)`` tokens -> the codebook rows closest in cosine similarity (float32)."""
        tokens = tokens.float()  # the original quantises in float32 even under autocast
        codes = self._codebook.embed[0]
        similarity = F.normalize(tokens, dim=-1) @ F.normalize(codes, dim=-1).T
        quantized = codes[similarity.argmax(dim=-1)]
        if tokens.requires_grad:
            # Straight-through: values are the codes, gradients reach the encoder.
            quantized = tokens + (quantized - tokens).detach()
        return quantized


class PatchRearrange(nn.Module):
    """``b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)``."""

    def __init__(self, patch_size: int, temporal_patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size

    def forward(self, video: Tensor) -> Tensor:
        b, c, frames, height, width = video.shape
        pt, p = self.temporal_patch_size, self.patch_size
        t, h, w = frames // pt, height // p, width // p
        patches = video.reshape(b, c, t, pt, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return patches.reshape(b, t, h, w, c * pt * p * p)


class CTViT(nn.Module):
    """The encoder half of CTViT: volume ``(B, C, D, H, W)`` -> quantised tokens ``(B, t, h, w, dim)``."""

    def __init__(self, config: CTViTConfig):
        super().__init__()
        self.config = config
        patch_dim = config.channels * config.temporal_patch_size * config.patch_size ** 2
        self.spatial_rel_pos_bias = ContinuousPositionBias(config.dim, config.heads)
        self.to_patch_emb = nn.Sequential(PatchRearrange(config.patch_size, config.temporal_patch_size),
                                          nn.LayerNorm(patch_dim), nn.Linear(patch_dim, config.dim),
                                          nn.LayerNorm(config.dim))
        self.enc_spatial_transformer = Transformer(config.dim, config.spatial_depth, config.dim_head, config.heads)
        self.enc_temporal_transformer = Transformer(config.dim, config.temporal_depth, config.dim_head,
                                                    config.heads)
        self.vq = VectorQuantizer(config.dim, config.codebook_size)

    def forward(self, video: Tensor) -> Tensor:
        self._check(video)
        tokens = self.encode(self.to_patch_emb(video))
        b, t, h, w, d = tokens.shape
        return self.vq(tokens.reshape(b, t * h * w, d)).view(b, t, h, w, d)

    def encode(self, tokens: Tensor) -> Tensor:
        """Spatial then temporal transformer; ``(b, t, h, w, d)`` in and out."""
        b, t, h, w, d = tokens.shape
        video_shape = (b, t, h, w)
        attn_bias = self.spatial_rel_pos_bias(h, w, tokens.device)
        spatial = self.enc_spatial_transformer(tokens.reshape(b * t, h * w, d), video_shape, attn_bias)
        temporal_in = spatial.view(b, t, h, w, d).permute(0, 2, 3, 1, 4).reshape(b * h * w, t, d)
        temporal = self.enc_temporal_transformer(temporal_in, video_shape)
        return temporal.view(b, h, w, t, d).permute(0, 3, 1, 2, 4)

    def _check(self, video: Tensor) -> None:
        config = self.config
        if video.ndim != 5 or video.shape[1] != config.channels:
            raise ValueError(f"CTViT expects (B, {config.channels}, D, H, W) volumes, got {tuple(video.shape)}")
        if tuple(video.shape[-2:]) != (config.image_size, config.image_size):
            raise ValueError(f"CTViT expects {config.image_size}x{config.image_size} slices, "
                             f"got {tuple(video.shape[-2:])}")
        if video.shape[2] % config.temporal_patch_size:
            raise ValueError(f"CTViT expects a depth that is a multiple of {config.temporal_patch_size}, "
                             f"got {video.shape[2]}")
