"""Embedding many items at once: the one batching loop every cache and evaluation uses."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor


@torch.no_grad()
def embed_in_batches(encode: Callable[[Sequence], Tensor], items, batch_size: int, out_dir: Path | None = None):
    """``encode`` applied to consecutive slices of ``items`` (studies or texts), concatenated.

    Without gradients: every caller embeds frozen towers or evaluates. The batch size is the
    caller's, because a different slicing can change the last bits of a convolution's output.
    ``items`` is anything sliceable (a list of texts, a tensor, an on-disk row store). Returns
    a tensor on the encoder's device, or, given ``out_dir``, writes the rows to an on-disk
    :class:`~m3bind.data.store.RowStore` there as they come and returns it.
    """
    batches = (encode(items[start:start + batch_size]) for start in range(0, len(items), batch_size))
    if out_dir is None:
        return torch.cat(list(batches))
    from m3bind.data.store import write_rows

    return write_rows(out_dir, (batch.float() for batch in batches))


# Input bytes per embedding batch: a batch of 128 demo studies fits easily, while one
# published-size CT volume (240 x 480 x 480 float32) is already 221 MB.
EMBED_BATCH_BYTES = 64 * 2 ** 20


def image_batch_size(images, most: int = 128, max_bytes: int = EMBED_BATCH_BYTES) -> int:
    """Studies per embedding batch for ``images`` (anything with a ``shape``): at most ``most``
    and at most ``max_bytes`` of float32 input, but never fewer than one."""
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) < 2:
        return most
    row_bytes = 4 * math.prod(int(d) for d in shape[1:])
    return max(1, min(most, max_bytes // row_bytes))
