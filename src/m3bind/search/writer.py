"""Changing an index folder: create or reopen it, add studies batch by batch, remove studies,
then bring the FAISS file up to date with the metadata table.

A write session marks the index unfinished when it starts and finished when :meth:`finish`
has written the FAISS file; an interrupted session leaves every committed batch in the table
and the index marked unfinished, so the next session (the same command again) carries on,
and a search refuses the half-built index with a message saying so.

The FAISS file is updated in place when that is exact (new vectors appended, removals from a
flat or IVF index, same kind of index) and rebuilt from the table otherwise: when it lagged
behind the table at the start, when ``auto`` now calls for another kind, when an IVF index has
more than doubled since its lists were trained, or to remove vectors from an HNSW graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from m3bind.errors import CheckpointError
from m3bind.search.layout import (DESCRIPTION_FILE, METADATA_FILE, VECTORS_FILE, IndexDescription, ModelRecord, ShardRecord,
                                  read_index_description, write_index_description)
from m3bind.search.model_identity import check_same_model
from m3bind.search.store import MetadataStore, StudyRecord
from m3bind.search.vectors import VectorIndex, VectorIndexSettings, new_vector_index, training_size

# An IVF index whose table has grown past this multiple of its training size is retrained.
_IVF_GROWTH_BEFORE_RETRAIN = 2.0
_READ_CHUNK = 50_000


class IndexWriter:
    """One write session on an index folder (see the module docstring)."""

    def __init__(self, folder: Path, description: IndexDescription, store: MetadataStore):
        self.folder = folder
        self.description = description
        self.store = store
        self.start_generation = store.generation()
        self.start_last_id = store.last_id()
        self._vectors_were_current = (store.state("vectors_generation") == str(self.start_generation)
                                      and (folder / VECTORS_FILE).is_file())
        self._removed: list[int] = []
        store.set_state(build_finished=0)

    @classmethod
    def open(cls, folder: Path, model: ModelRecord, *, create: bool, resume_finished: bool,
             settings: VectorIndexSettings | None = None, shard: ShardRecord | None = None) -> "IndexWriter":
        """Open ``folder`` for writing, creating it when ``create`` and it holds no index.

        ``resume_finished``: whether a finished index may be written to (adding to it); an
        unfinished one is always reopened, to carry on after an interruption.
        """
        folder = Path(folder)
        if (folder / DESCRIPTION_FILE).is_file():
            description = read_index_description(folder)
            check_same_model(description.model.fingerprint, model.fingerprint, model.folder)
            if description.shard != shard:
                raise CheckpointError(f"{folder}: this index is shard {description.shard or 'none'}, "
                                      f"not shard {shard or 'none'}")
            store = MetadataStore.open(folder / METADATA_FILE, description.model.shared_dim, writable=True)
            if store.state("build_finished") == "1" and not resume_finished:
                store.close()
                raise CheckpointError(f"{folder}: an index already exists here; add studies to it with --add, "
                                      "or choose another --out")
            if settings is not None and settings != description.vectors:
                description = description.model_copy(update={"vectors": settings})
                write_index_description(folder, description)
                store.set_state(vectors_generation=-1)  # the saved vectors follow the old settings
            return cls(folder, description, store)
        if not create:
            raise CheckpointError(f"{folder}: no index here to add to; build one first (without --add)")
        if folder.exists() and any(folder.iterdir()):
            raise CheckpointError(f"{folder}: the folder exists and is not an index; choose another --out")
        folder.mkdir(parents=True, exist_ok=True)
        description = IndexDescription(model=model, vectors=settings or VectorIndexSettings(), shard=shard)
        store = MetadataStore.open(folder / METADATA_FILE, model.shared_dim, writable=True)
        write_index_description(folder, description)
        return cls(folder, description, store)

    def add(self, records: Sequence[StudyRecord], vectors: np.ndarray) -> list[int]:
        """Commit one batch (metadata and vectors in one transaction)."""
        return self.store.insert(records, vectors) if records else []

    def remove(self, ids: Sequence[int]) -> None:
        self.store.remove(ids)
        self._removed += [int(i) for i in ids]

    def finish(self) -> str:
        """Bring vectors.faiss up to date, mark the index finished; returns the vector index kind."""
        settings = self.description.vectors
        n_vectors = self.store.count()
        kind = settings.kind_for(n_vectors)
        index = self._index_to_update(kind, n_vectors)
        if index is None:
            index = self._rebuild(kind, n_vectors)
            trained_on = n_vectors
        else:
            if self._removed:
                index.remove(self._removed)
            for ids, vectors in self.store.iter_vectors(_READ_CHUNK, after_id=self.start_last_id):
                index.add(ids, vectors)
            trained_on = int(self.store.state("vectors_trained_on", "0"))
        index.save(self.folder / VECTORS_FILE)
        self.store.set_state(vectors_generation=self.store.generation(), vectors_kind=kind,
                             vectors_trained_on=trained_on, build_finished=1)
        return kind

    def close(self) -> None:
        self.store.close()

    def _index_to_update(self, kind: str, n_vectors: int) -> VectorIndex | None:
        """The saved FAISS index when updating it in place is exact, else None."""
        if not self._vectors_were_current or self.store.state("vectors_kind") != kind:
            return None
        index = VectorIndex.load(self.folder / VECTORS_FILE, kind, self.description.model.shared_dim,
                                 self.description.vectors)
        if self._removed and not index.can_remove:
            return None
        trained_on = int(self.store.state("vectors_trained_on", "0"))
        if kind == "ivf" and n_vectors > _IVF_GROWTH_BEFORE_RETRAIN * max(trained_on, 1):
            return None
        return index

    def _rebuild(self, kind: str, n_vectors: int) -> VectorIndex:
        index = new_vector_index(kind, self.description.model.shared_dim, n_vectors, self.description.vectors)
        wanted = training_size(index)
        if wanted and n_vectors:
            ids = self.store.all_ids()
            sample = np.random.default_rng(0).choice(ids, size=min(wanted, len(ids)), replace=False)
            index.train(self.store.vectors(np.sort(sample).tolist()))
        for ids, vectors in self.store.iter_vectors(_READ_CHUNK):
            index.add(ids, vectors)
        return index
