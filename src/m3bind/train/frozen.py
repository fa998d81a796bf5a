"""Embeddings of frozen towers, computed once and reused by the training stages.

Binding with frozen image towers (no image LoRA), SESKD's teachers and image encoders, and
``extend``'s student targets never change during their stage, so recomputing them every step
would only cost time (``benchmarks/distill_cache.py``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from m3bind.models.binding import BoundModality
from m3bind.models.embedding import embed_in_batches


class FrozenImageEmbeddings:
    """A modality's native image embeddings (before the binding head), cached or recomputed."""

    def __init__(self, bound: BoundModality, images: Tensor, cache: bool = True, batch_size: int = 128):
        self.model = bound.model
        self.images = images
        self.table: Tensor | None = None
        self.model.eval()
        if cache:
            self.table = embed_in_batches(self._encode, images, batch_size)

    def _encode(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images.to(self.model.device))

    def __getitem__(self, index: Tensor) -> Tensor:
        if self.table is not None:
            return self.table[index]
        with torch.no_grad():
            return self._encode(self.images[index])


class FrozenTextEmbeddings:
    """Shared-space embeddings of every distinct text under one or more frozen encoders.

    ``encoders`` maps a name to an ``encode_texts`` callable; calling the object with a list of
    texts returns ``{name: (len(texts), D)}``. With ``cache=False`` the encoders run on demand
    (the same values, only slower); they must then stay frozen for the object's lifetime.
    """

    def __init__(self, encoders: Mapping[str, callable], texts: Sequence[str], cache: bool = True,
                 batch_size: int = 256):
        self.encoders = dict(encoders)
        self.row = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        self.table: dict[str, Tensor] = {}
        if cache:
            unique = list(self.row)
            self.table = {name: embed_in_batches(encode, unique, batch_size) for name, encode in self.encoders.items()}

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if self.table:
            rows = torch.tensor([self.row[t] for t in texts])
            return {name: table[rows] for name, table in self.table.items()}
        with torch.no_grad():
            return {name: encode(list(texts)) for name, encode in self.encoders.items()}
