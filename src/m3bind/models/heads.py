"""Binding heads: one linear map native -> shared D per modality, used for BOTH its image and
its text embeddings, so a model's own image-text alignment carries over into the shared space
(published models have different native widths, e.g. MGCA 128).

Initialised semi-orthogonal: when D >= native width the columns are orthonormal, so the head
is an isometry and every within-modality cosine similarity is exactly what the original model
gave (binding starts from the original image-text alignment, not from a random distortion).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BindingHead(nn.Module):
    def __init__(self, native_dim: int, shared_dim: int, generator: torch.Generator | None = None):
        super().__init__()
        self.native_dim = native_dim
        self.shared_dim = shared_dim
        self.proj = nn.Linear(native_dim, shared_dim, bias=False)
        with torch.no_grad():
            nn.init.orthogonal_(self.proj.weight, generator=generator)

    def forward(self, embeddings: Tensor) -> Tensor:
        """Project normalised native embeddings into the shared space and renormalise."""
        return F.normalize(self.proj(embeddings.to(self.proj.weight.dtype)), dim=-1)
