"""Embedding many items at once: the one batching loop every cache and evaluation uses."""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn


@torch.no_grad()
def embed_in_batches(encode: Callable[[Sequence], Tensor], items, batch_size: int, out_dir: Path | None = None):
    """``encode`` applied to consecutive slices of ``items`` (studies or texts), concatenated.

    Without gradients: every caller embeds frozen towers or evaluates. The batch size is the
    caller's, because a different slicing can change the last bits of a convolution's output.
    ``items`` is anything sliceable (a list of texts, a tensor, an on-disk row store). Returns
    a tensor on the encoder's device, or, given ``out_dir``, writes the rows to an on-disk
    :class:`~m3bind.data.store.RowStore` there as they come and returns it.
    """
    # Studies streamed from their files come with their own loader, which reads ahead.
    slices = (items.batches(batch_size) if hasattr(items, "batches") else
              (items[start:start + batch_size] for start in range(0, len(items), batch_size)))
    batches = (encode(rows) for rows in slices)
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


def image_side_digest(model: nn.Module) -> str:
    """A digest of everything in ``model``'s state except its text tower: two models with the
    same digest embed the same images identically. The names count too, so a LoRA-wrapped image
    tower never matches an unwrapped one."""
    text = getattr(model, "text_tower", None)
    text_tensors = set() if text is None else {id(t) for t in (*text.parameters(), *text.buffers())}
    # By name too: peft's LoRA on nn.MultiheadAttention keeps the base weights as plain tensors
    # (not parameters) and merges and unmerges the LoRA into them at each forward, which changes
    # their last bits; they are still text-tower state.
    prefix = next((f"{name}." for name, module in model.named_modules() if module is text and name), None)
    digest = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=16)
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in text_tensors or (prefix is not None and name.startswith(prefix)):
            continue
        values = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(f"{name}:{values.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ImageEmbeddingMemo:
    """Native image embeddings (before any binding head) of whole study sets, computed once per
    image side and shared by every model with the same image-side weights.

    Binding trains LoRA on the text towers and the heads, so the unbound, control, bound and
    final variants share their image towers: evaluating them all embeds each study once, not
    once per variant (for CT-CLIP on thousands of volumes, hours). A model's weights are read
    once, when it is first seen, so a memo must only live while no model trains.
    """

    def __init__(self):
        self._digests: dict[int, tuple[nn.Module, str]] = {}
        self._rows: dict[tuple[int, str], tuple[object, Tensor]] = {}

    def digest(self, model: nn.Module) -> str:
        if id(model) not in self._digests:
            # The model is kept with its digest so that its id cannot be reused by another one.
            self._digests[id(model)] = (model, image_side_digest(model))
        return self._digests[id(model)][1]

    def native(self, model, images, batch_size: int) -> Tensor:
        """``model.encode_image`` of every row of ``images`` (on the CPU), in ``batch_size`` slices."""
        key = (id(images), self.digest(model))
        if key not in self._rows:
            rows = embed_in_batches(lambda batch: model.encode_image(batch.to(model.device)).cpu(), images,
                                    batch_size)
            self._rows[key] = (images, rows)  # the images too: their id stays theirs
        return self._rows[key][1]
