"""Embedding many items at once: the one batching loop every cache and evaluation uses."""
from __future__ import annotations

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
