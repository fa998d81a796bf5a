"""Embeddings of frozen towers, computed once and reused by the training stages.

Binding with frozen image towers (no image LoRA), SESKD's teachers and image encoders, and
``extend``'s student targets never change during their stage, so recomputing them every step
would only cost time (``benchmarks/distill_cache.py``). Given a ``directory``, the table is
written to disk (a :class:`~m3bind.data.store.RowStore`) and read a batch at a time, so its
size is bounded by the disk, not by memory; without one it stays in memory (small runs, tests).
Rows come back on ``device``, the device of the step that uses them.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from m3bind.fileio import atomic_write_text
from m3bind.models.binding import BoundModality
from m3bind.models.embedding import embed_in_batches, image_batch_size, image_side_digest

KEY_FILE = "key.txt"


def _fresh(directory: Path | None) -> Path | None:
    """A table left by an earlier run belongs to other weights: start it again."""
    if directory is not None and directory.exists():
        shutil.rmtree(directory)
    return directory


class FrozenImageEmbeddings:
    """A modality's native image embeddings (before the binding head), cached or recomputed.

    Given ``shared`` and ``source_key`` (what the images are: :attr:`StudySet.key`), the table
    lives in ``shared`` under a name derived from the studies, the batch size and a digest of the
    image side's weights, and a table already there is read instead of embedding again: binding,
    its lambda = 0 control, the ablations, SESKD and a resumed run embed the same training studies
    through the same frozen tower, which for CT-CLIP over a real training set takes hours.
    Otherwise the table is written to ``directory``, replacing any earlier one.
    """

    def __init__(self, bound: BoundModality, images, cache: bool = True, batch_size: int | None = None,
                 directory: Path | None = None, shared: Path | None = None, source_key: str = ""):
        from m3bind.data.store import RowStore

        self.model = bound.model
        self.images = images
        self.table = None
        self.model.eval()
        if not cache:
            return
        batch_size = batch_size or image_batch_size(images)
        key = stored = None
        if shared is not None and source_key:
            key = f"{source_key}:batch {batch_size}:{image_side_digest(self.model)}"
            directory = shared / f"{source_key.split('-')[0]}-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}"
            stored = (directory / KEY_FILE).read_text() if (directory / KEY_FILE).is_file() else None
            if stored == key:
                self.table = RowStore(directory)
                return
        # A shared folder's name comes from its key, so rows there without the key file (another
        # process of this run still writing, or a killed run) are these very rows: the writer keeps
        # them rather than deleting a table someone may be reading. A run's own folder, or a shared
        # one under another key (never expected), starts again.
        if key is None or stored is not None:
            _fresh(directory)
        self.table = embed_in_batches(self._encode, images, batch_size, out_dir=directory)
        if key is not None:
            atomic_write_text(directory / KEY_FILE, key)  # after the rows: a killed run leaves no key

    def _encode(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images.to(self.model.device))

    def __getitem__(self, index: Tensor) -> Tensor:
        if self.table is not None:
            return self.table[index].to(self.model.device)
        with torch.no_grad():
            return self._encode(self.images[index])


class FrozenTextEmbeddings:
    """Shared-space embeddings of every distinct text under one or more frozen encoders.

    ``encoders`` maps a name to an ``encode_texts`` callable; calling the object with a list of
    texts returns ``{name: (len(texts), D)}`` on ``device``. With ``cache=False`` the encoders
    run on demand (the same values, only slower); they must then stay frozen for the object's
    lifetime.
    """

    def __init__(self, encoders: Mapping[str, Callable], texts: Sequence[str], cache: bool = True,
                 batch_size: int = 256, directory: Path | None = None, device: torch.device | str = "cpu"):
        self.encoders = dict(encoders)
        self.device = torch.device(device)
        self.row = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        self.table: dict[str, object] = {}
        if cache:
            self.table = self._build_tables(list(self.row), batch_size, _fresh(directory))

    @torch.no_grad()
    def _build_tables(self, unique: list[str], batch_size: int, directory: Path | None) -> dict[str, object]:
        """Every encoder's table, a batch of texts at a time through all encoders (not one encoder
        through all texts): encoders that share a frozen backbone (the built-in MiniLM towers) then
        find each batch's sentence vectors in its cache even when the corpus is larger than the
        cache, instead of each recomputing them."""
        from contextlib import ExitStack

        from m3bind.data.store import SHARD_BYTES, RowStore, RowWriter

        # The writers fill side by side, so each gets a share of one shard's memory, not a shard each.
        shard_bytes = max(1, SHARD_BYTES // max(1, len(self.encoders)))
        with ExitStack() as stack:
            writers = ({name: stack.enter_context(RowWriter(directory / name, shard_bytes=shard_bytes))
                        for name in self.encoders} if directory is not None else None)
            parts: dict[str, list[Tensor]] = {name: [] for name in self.encoders}
            for start in range(0, len(unique), batch_size):
                chunk = unique[start:start + batch_size]
                for name, encode in self.encoders.items():
                    rows = encode(chunk)
                    if writers is not None:
                        writers[name].append(rows.float())
                    else:
                        parts[name].append(rows)
        if directory is not None:
            return {name: RowStore(directory / name) for name in self.encoders}
        return {name: torch.cat(rows) for name, rows in parts.items()}

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if self.table:
            rows = torch.tensor([self.row[t] for t in texts])
            return {name: table[rows].to(self.device) for name, table in self.table.items()}
        with torch.no_grad():
            return {name: encode(list(texts)).to(self.device) for name, encode in self.encoders.items()}
