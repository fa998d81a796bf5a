"""Sentence vectors on disk: a frozen sentence encoder's vector of each text, kept between processes.

Why it exists: the in-memory cache of :class:`~m3bind.models.sentence.FrozenSentenceEncoder`
lives as long as its process, but a user runs the stages as separate commands (``m3bind
pretrain``, ``bind``, ``distill``, ``eval``), evaluates again with other settings, or resumes a
run that stopped; each is a new process asking for the same training and test reports, and on a
CPU every one of them cost a MiniLM forward again (about 30 ms per report on a 2-core machine).

The store lives in the run's cache folder (``data.cache_dir``), beside the preprocessed
studies. A vector depends on the backbone's weights, and in its last bits on the torch release
and the device kind it was computed on; runs must reproduce bit for bit, so each combination
has a folder of its own (:func:`store_tag`). In it, a shard is two ``.npy`` files:
``<id>.keys.npy`` (uint8, ``(n, KEY_BYTES)``: a blake2b digest of each text's token ids) and
``<id>.vectors.npy`` (float32, ``(n, width)``). Both are written under temporary names and
renamed, the keys last, so a shard is complete once its keys file exists; two processes (the
ranks of a multi-process run, two runs sharing a cache) write shards of their own and never a
common file. Files are read with ``allow_pickle=False`` and checked for dtype and shape: a
cache folder is untrusted input.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from m3bind.errors import DataError

KEY_BYTES = 16
# New vectors are written as a shard once this many are waiting (about 6 MB at MiniLM's 384
# floats); the rest when the stage ends (:meth:`SentenceVectorStore.flush`).
FLUSH_TEXTS = 4096
KEYS_SUFFIX, VECTORS_SUFFIX = ".keys.npy", ".vectors.npy"


def store_tag(backbone_sha256: str, device_type: str) -> str:
    """The folder name for vectors of one backbone computed by this torch release on one kind of device."""
    return hashlib.sha256(f"{backbone_sha256}|torch {torch.__version__}|{device_type}".encode()).hexdigest()[:16]


def text_key(token_ids: bytes) -> bytes:
    """A text's key on disk: the digest of its token ids (what the in-memory cache keys by)."""
    return hashlib.blake2b(token_ids, digest_size=KEY_BYTES).digest()


class SentenceVectorStore:
    """Sentence vectors of width ``width`` in ``folder`` (created on the first write).

    The keys of the shards present when it is first read are indexed in memory (about 200 bytes
    a text); vectors are read from their shard when asked for, never held.
    """

    def __init__(self, folder: str | Path, width: int):
        self.folder = Path(folder)
        self.width = int(width)
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._shards: list[Path] = []
        self._pending: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self._indexed()) + len(self._pending)

    def get(self, keys: Iterable[bytes]) -> dict[bytes, Tensor]:
        """{key: vector} for those of ``keys`` the store holds."""
        index = self._indexed()
        found: dict[bytes, Tensor] = {}
        by_shard: dict[int, list[tuple[int, bytes]]] = {}
        for key in keys:
            if key in self._pending:
                found[key] = self._pending[key]
            elif key in index:
                shard, row = index[key]
                by_shard.setdefault(shard, []).append((row, key))
        for shard, wanted in by_shard.items():
            vectors = self._vectors(self._shards[shard])
            rows = np.asarray([row for row, _ in wanted])
            for (_, key), vector in zip(wanted, torch.from_numpy(np.array(vectors[rows]))):
                found[key] = vector
            del vectors  # unmap: a kept mapping would keep every page it touched resident
        return found

    def put(self, vectors: Mapping[bytes, Tensor]) -> None:
        """Add new vectors; they are written once FLUSH_TEXTS wait, or at :meth:`flush`."""
        index = self._indexed()
        for key, vector in vectors.items():
            if key not in index:
                self._pending[key] = vector.detach().float().cpu()
        if len(self._pending) >= FLUSH_TEXTS:
            self.flush()

    def flush(self) -> None:
        """Write the waiting vectors as one shard."""
        if not self._pending:
            return
        keys = np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, KEY_BYTES)
        vectors = torch.stack(list(self._pending.values())).numpy().astype(np.float32, copy=False)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        for array, suffix in ((vectors, VECTORS_SUFFIX), (keys, KEYS_SUFFIX)):   # keys last: the shard is complete
            temporary = self.folder / f".{name}{suffix}.tmp"
            with open(temporary, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
            os.replace(temporary, self.folder / f"{name}{suffix}")
        index, shard = self._indexed(), len(self._shards)
        self._shards.append(self.folder / f"{name}{VECTORS_SUFFIX}")
        for row, key in enumerate(self._pending):
            index[key] = (shard, row)
        self._pending = {}

    def _indexed(self) -> dict[bytes, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            for keys_path in sorted(self.folder.glob(f"*{KEYS_SUFFIX}")):
                vectors_path = keys_path.with_name(keys_path.name[:-len(KEYS_SUFFIX)] + VECTORS_SUFFIX)
                keys = self._read(keys_path, np.uint8, (None, KEY_BYTES))
                vectors = self._vectors(vectors_path)
                if len(vectors) != len(keys):
                    raise DataError(vectors_path, f"{len(vectors)} sentence vectors for {len(keys)} keys in "
                                                  f"{keys_path.name}; delete the folder {self.folder} to rebuild it")
                shard = len(self._shards)
                self._shards.append(vectors_path)
                for row, key in enumerate(keys):
                    self._index[key.tobytes()] = (shard, row)
        return self._index

    def _vectors(self, path: Path) -> np.ndarray:
        return self._read(path, np.float32, (None, self.width), mmap=True)

    def _read(self, path: Path, dtype, shape: tuple, mmap: bool = False) -> np.ndarray:
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(path, f"not a readable sentence-vector shard ({error}); delete the folder "
                                  f"{self.folder} to rebuild it") from None
        if array.dtype != dtype or array.ndim != len(shape) or any(
                want is not None and got != want for got, want in zip(array.shape, shape)):
            raise DataError(path, f"a sentence-vector shard of dtype {array.dtype} and shape {array.shape}, "
                                  f"expected {np.dtype(dtype)} rows of {shape[1]}; delete the folder "
                                  f"{self.folder} to rebuild it")
        return array
