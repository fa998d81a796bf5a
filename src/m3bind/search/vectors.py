"""The FAISS half of a search index: which kind of vector index, and how it is built and searched.

Embeddings are unit vectors, so the inner product is the cosine similarity. Three kinds:

* ``flat``: exact search (``IndexFlatIP`` in an ``IndexIDMap2``); a query scans every vector.
* ``ivf``: an inverted file (``IndexIVFFlat``): vectors are clustered into ``nlist`` lists at
  build time and a query scans only the ``nprobe`` lists nearest to it. Approximate; the
  speed-up over ``flat`` is about ``nlist / nprobe``.
* ``hnsw``: a navigable small-world graph (``IndexHNSWFlat`` in an ``IndexIDMap2``). Approximate,
  fast to query, slow to build, and it cannot remove vectors (the index is rebuilt instead).

``auto`` (the default) is ``flat`` up to ``exact_threshold`` vectors and ``ivf`` above: below a
few hundred thousand vectors an exact scan takes milliseconds, so nothing is gained by
giving up exactness. Vector ids are the study ids of the metadata table.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from m3bind.errors import CheckpointError

IndexKind = Literal["flat", "ivf", "hnsw"]

# faiss' k-means warns below 39 training points per list; its default caps the sample at 256.
_MIN_POINTS_PER_LIST = 39
_TRAINING_POINTS_PER_LIST = 64


class VectorIndexSettings(BaseModel):
    """How the vector index is chosen and tuned (saved in the index description)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="'auto': exact ('flat') up to exact_threshold vectors, 'ivf' above.")
    exact_threshold: PositiveInt = Field(100_000, description="Largest index 'auto' keeps exact.")
    nlist: PositiveInt | None = Field(None, description="IVF lists; None: 4 * sqrt(number of vectors).")
    nprobe: PositiveInt | None = Field(None, description="IVF lists scanned per query; None: nlist / 16.")
    hnsw_m: PositiveInt = Field(32, description="HNSW neighbours per node.")
    ef_construction: PositiveInt = Field(200, description="HNSW candidate list size while building.")
    ef_search: PositiveInt = Field(128, description="HNSW candidate list size per query.")

    def kind_for(self, n_vectors: int) -> IndexKind:
        if self.type != "auto":
            return self.type
        return "flat" if n_vectors <= self.exact_threshold else "ivf"

    def lists_for(self, n_vectors: int) -> int:
        """IVF list count: the setting (at most one list per vector), or 4 * sqrt(n) capped so that
        k-means has enough points per list to train well."""
        if self.nlist is not None:
            return max(1, min(self.nlist, n_vectors))
        wanted = round(4 * math.sqrt(n_vectors))
        return max(1, min(wanted, n_vectors // _MIN_POINTS_PER_LIST))

    def probes_for(self, nlist: int) -> int:
        # nlist / 16 measured >= 0.95 recall@10 on clustered 512-d data (benchmarks/search_scale.py).
        return min(nlist, self.nprobe or max(1, nlist // 16))


class VectorIndex:
    """A FAISS index of one kind, with the search parameters its kind needs."""

    def __init__(self, index: faiss.Index, kind: IndexKind, settings: VectorIndexSettings):
        self.index = index
        self.kind = kind
        self.settings = settings

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    @property
    def can_remove(self) -> bool:
        return self.kind != "hnsw"

    def train(self, sample: np.ndarray) -> None:
        self.index.train(_float_rows(sample))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(_float_rows(vectors), np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Iterable[int]) -> None:
        if not self.can_remove:
            raise ValueError("an HNSW index cannot remove vectors; rebuild it")
        self.index.remove_ids(np.asarray(list(ids), dtype=np.int64))

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k); missing results (fewer than k vectors) have id -1.

        ``allowed_ids`` restricts the search to those ids (the metadata filters).
        """
        selector = None if allowed_ids is None else faiss.IDSelectorBatch(
            np.ascontiguousarray(allowed_ids, dtype=np.int64))
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.settings.probes_for(self.index.nlist), sel=selector)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.settings.ef_search, k), sel=selector)
        else:
            params = faiss.SearchParameters(sel=selector)
        return self.index.search(_float_rows(queries), k, params=params)

    def save(self, path: Path) -> None:
        """Write the index so that a reader sees the old file or the new one, never half of one."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: Path, kind: IndexKind, dim: int, settings: VectorIndexSettings) -> "VectorIndex":
        if not path.is_file():
            raise CheckpointError(f"{path}: vector index file not found")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as error:
            raise CheckpointError(f"{path}: unreadable FAISS index: {error}") from error
        expected = {"flat": faiss.IndexIDMap2, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexIDMap2}[kind]
        if not isinstance(index, expected) or index.d != dim:
            raise CheckpointError(f"{path}: expected a {dim}-dimensional {kind} index, found "
                                  f"{type(index).__name__} of dimension {index.d}")
        return cls(index, kind, settings)


def new_vector_index(kind: IndexKind, dim: int, n_vectors: int, settings: VectorIndexSettings) -> VectorIndex:
    """An empty index of ``kind`` sized for ``n_vectors`` (IVF needs training before adding)."""
    # The faiss wrappers keep the inner index / quantizer alive as long as the outer index.
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, settings.lists_for(n_vectors),
                                   faiss.METRIC_INNER_PRODUCT)
    else:
        graph = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = settings.ef_construction
        index = faiss.IndexIDMap2(graph)
    return VectorIndex(index, kind, settings)


def training_size(index: VectorIndex) -> int:
    """How many vectors to train an IVF index on (0 for kinds that need no training)."""
    if not index.needs_training:
        return 0
    return index.index.nlist * _TRAINING_POINTS_PER_LIST


def _float_rows(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32).reshape(len(array), -1)
