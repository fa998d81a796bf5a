"""Rows of one shape on disk: the preprocessed-study cache and cached frozen embeddings.

A store is a folder of ``.npy`` shards plus ``rows.json`` (row shape, dtype, rows per shard).
Reading maps only the shards a request touches, copies the requested rows and unmaps again,
so a process's memory holds the rows it is working on, never the whole split (a mapping kept
open would keep every page it ever touched resident). Stores are written to a temporary
folder and renamed into place, so a killed writer never leaves a half store behind and two
runs building the same store at once both end with a complete one.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from m3bind.errors import DataError
from m3bind.fileio import atomic_write_text

# Rows are grouped into shards of about this many bytes (large enough for sequential reads,
# small enough that a writer's buffer stays modest: it is the one part of a writer's memory that
# grows with the data, up to this bound).
SHARD_BYTES = 16 * 2 ** 20
INDEX_FILE = "rows.json"


def _as_positions(index, length: int) -> np.ndarray:
    """Any row index (int, slice, sequence, array, tensor) as an int64 array of positions."""
    if isinstance(index, slice):
        return np.arange(length)[index]
    if torch.is_tensor(index):
        index = index.cpu().numpy()
    positions = np.asarray(index, dtype=np.int64).reshape(-1)
    if positions.size and (positions.min() < -length or positions.max() >= length):
        raise IndexError(f"row index out of range for {length} rows")
    return np.where(positions < 0, positions + length, positions)


class RowStore:
    """A read-only store written by :class:`RowWriter`; ``store[index]`` returns a float tensor.

    ``index`` may be an int (one row, no leading dimension), a slice, or a sequence/array/tensor
    of positions (rows in that order).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            index = json.loads((self.directory / INDEX_FILE).read_text())
            self.row_shape = tuple(int(d) for d in index["shape"])
            self.dtype = np.dtype(index["dtype"])
            self.shard_rows = [int(n) for n in index["shards"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(self.directory, f"not a readable row store ({error}); delete it to rebuild") from None
        self.starts = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def _shard_path(self, shard: int) -> Path:
        return self.directory / f"shard_{shard:05d}.npy"

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (already normalised), in that order."""
        out = np.empty((len(positions), *self.row_shape), dtype=self.dtype)
        shards = np.searchsorted(self.starts, positions, side="right") - 1
        for shard in np.unique(shards):
            where = np.nonzero(shards == shard)[0]
            mapped = np.load(self._shard_path(int(shard)), mmap_mode="r")
            out[where] = mapped[positions[where] - self.starts[shard]]
            del mapped  # unmap now: the pages read stay out of this process's memory
        return out

    def __getitem__(self, index) -> Tensor:
        rows = torch.from_numpy(self.read(_as_positions(index, len(self))))
        return rows[0] if isinstance(index, (int, np.integer)) else rows

    def subset(self, index) -> RowSubset:
        return RowSubset(self, _as_positions(index, len(self)))


class RowSubset:
    """Some rows of a :class:`RowStore`, read lazily with the same indexing."""

    def __init__(self, store: RowStore, positions: np.ndarray):
        self.store = store
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.store.row_shape)

    def __getitem__(self, index) -> Tensor:
        rows = torch.from_numpy(self.store.read(self.positions[_as_positions(index, len(self))]))
        return rows[0] if isinstance(index, (int, np.integer)) else rows

    def subset(self, index) -> RowSubset:
        return RowSubset(self.store, self.positions[_as_positions(index, len(self))])


def take_rows(rows, index):
    """``rows[index]`` without reading: a lazy subset of a store, or the indexed tensor."""
    if hasattr(rows, "subset"):
        return rows.subset(index)
    return rows[torch.as_tensor(np.asarray(index, dtype=np.int64))]


class RowWriter:
    """Appends batches of equal-shape rows and publishes them as a :class:`RowStore` on close.

    Use as a context manager; on an exception the temporary folder is removed and nothing is
    published. An existing store at ``directory`` is kept (see ``__exit__``): remove it first
    to replace it.
    """

    def __init__(self, directory: str | Path, dtype=np.float32, shard_bytes: int | None = None):
        self.directory = Path(directory)
        # Rows are held in memory until a shard of this size is written.
        self.shard_bytes = shard_bytes or SHARD_BYTES
        self.tmp = self.directory.with_name(f".{self.directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        self.dtype = np.dtype(dtype)
        self.row_shape: tuple[int, ...] | None = None
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.shard_rows: list[int] = []

    def __enter__(self) -> RowWriter:
        self.tmp.mkdir(parents=True)
        return self

    def append(self, rows: Tensor | np.ndarray) -> None:
        array = rows.detach().cpu().numpy() if torch.is_tensor(rows) else np.asarray(rows)
        array = array.astype(self.dtype, copy=False)
        if self.row_shape is None:
            self.row_shape = tuple(array.shape[1:])
        elif tuple(array.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {tuple(array.shape[1:])} appended to a store of {self.row_shape}")
        self.buffer.append(np.ascontiguousarray(array))
        self.buffered += len(array)
        if self.buffered * self._row_bytes() >= self.shard_bytes:
            self._flush()

    def _row_bytes(self) -> int:
        return int(np.prod(self.row_shape or (1,))) * self.dtype.itemsize

    def _flush(self) -> None:
        if not self.buffered:
            return
        # Filled piece by piece through a mapping: concatenating first would hold the shard twice.
        shard = np.lib.format.open_memmap(self.tmp / f"shard_{len(self.shard_rows):05d}.npy", mode="w+",
                                          dtype=self.dtype, shape=(self.buffered, *self.row_shape))
        start = 0
        for piece in self.buffer:
            shard[start:start + len(piece)] = piece
            start += len(piece)
        shard.flush()
        del shard
        self.shard_rows.append(self.buffered)
        self.buffer, self.buffered = [], 0

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self._flush()
        atomic_write_text(self.tmp / INDEX_FILE, json.dumps(
            {"shape": list(self.row_shape or ()), "dtype": self.dtype.name, "shards": self.shard_rows}))
        try:
            os.replace(self.tmp, self.directory)
        except OSError:
            # Another run published the same store first (stores are named by what they hold, and a
            # caller replacing a store removes the old one first); theirs is complete, keep it.
            shutil.rmtree(self.tmp, ignore_errors=True)

    def store(self) -> RowStore:
        return RowStore(self.directory)


def write_rows(directory: str | Path, batches: Sequence | object) -> RowStore:
    """Write an iterable of row batches to a store at ``directory`` and open it."""
    with RowWriter(directory) as writer:
        for batch in batches:
            writer.append(batch)
    return RowStore(directory)
