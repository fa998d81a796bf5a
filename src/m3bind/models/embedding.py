"""Embedding many items at once: the one batching loop every cache and evaluation uses."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


@torch.no_grad()
def embed_in_batches(encode: Callable[[Sequence], Tensor], items: Sequence | Tensor, batch_size: int) -> Tensor:
    """``encode`` applied to consecutive slices of ``items`` (studies or texts), concatenated.

    Without gradients: every caller embeds frozen towers or evaluates. The batch size is the
    caller's, because a different slicing can change the last bits of a convolution's output.
    """
    return torch.cat([encode(items[start:start + batch_size]) for start in range(0, len(items), batch_size)])
