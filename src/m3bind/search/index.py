"""Opening an index for searching, and the ranked, filtered nearest-neighbour search itself."""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from m3bind.errors import CheckpointError, ConfigError
from m3bind.search.layout import METADATA_FILE, VECTORS_FILE, IndexDescription, read_index_description
from m3bind.search.store import MetadataStore, StudyRecord
from m3bind.search.vectors import VectorIndex


@dataclass
class Hit:
    """One search result: the study and its cosine similarity to the query."""

    score: float
    study: StudyRecord

    def to_json(self) -> dict:
        return {"score": self.score, **self.study.to_json()}


@dataclass
class Filters:
    """Which studies a search may return; ``None``/empty means no restriction.

    ``modalities``: any of them; ``labels``: every one of them; ``patient``: that patient id.
    """

    modalities: Sequence[str] | None = None
    labels: Sequence[str] | None = None
    patient: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.modalities) or bool(self.labels) or self.patient is not None


class SearchIndex:
    """A finished index, opened read-only. Safe to search from several threads at once."""

    def __init__(self, folder: Path, description: IndexDescription, store: MetadataStore, vectors: VectorIndex):
        self.folder = folder
        self.description = description
        self.store = store
        self.vectors = vectors

    @classmethod
    def open(cls, folder: str | Path) -> "SearchIndex":
        folder = Path(folder)
        description = read_index_description(folder)
        store = MetadataStore.open(folder / METADATA_FILE, description.model.shared_dim)
        try:
            finished = store.state("build_finished") == "1"
            current = store.state("vectors_generation") == str(store.generation())
            if not (finished and current):
                raise CheckpointError(f"{folder}: the index was not finished (its build or last change was "
                                      "interrupted); run the same index command again to complete it")
            vectors = VectorIndex.load(folder / VECTORS_FILE, store.state("vectors_kind"),
                                       description.model.shared_dim, description.vectors)
        except BaseException:
            store.close()
            raise
        return cls(folder, description, store, vectors)

    def close(self) -> None:
        self.store.close()

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def modalities(self) -> list[str]:
        return list(self.description.model.modalities)

    def study(self, study_id: int) -> StudyRecord | None:
        return self.store.record(study_id)

    def search(self, query: np.ndarray, k: int, filters: Filters | None = None, exclude: Collection[int] = (),
               per_modality: bool = False) -> list[Hit]:
        """The ``k`` studies most similar to the unit vector ``query``, best first.

        ``per_modality``: the ``k`` best of each modality (of the filter, or all), merged by
        score. Bound spaces keep a modality gap (a text sits closer to one modality's studies
        than to another's), so a single top-k can be all of one modality.
        """
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}")
        filters = filters or Filters()
        unknown = sorted(set(filters.modalities or ()) - set(self.modalities))
        if unknown:
            raise ConfigError(f"unknown modality {', '.join(unknown)}; this index has {', '.join(self.modalities)}")
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.vectors.dim:
            raise ConfigError(f"query has {query.shape[1]} dimensions, the index {self.vectors.dim}")
        if not per_modality:
            return self._search(query, k, filters, exclude)
        hits = [hit for modality in (filters.modalities or self.modalities)
                for hit in self._search(query, k, replace(filters, modalities=[modality]), exclude)]
        return sorted(hits, key=lambda hit: -hit.score)

    def _search(self, query: np.ndarray, k: int, filters: Filters, exclude: Collection[int]) -> list[Hit]:
        allowed = self.store.filter_ids(filters.modalities, filters.labels, filters.patient) if filters.active else None
        wanted = k + len(exclude)
        if len(self.vectors) == 0 or (allowed is not None and len(allowed) == 0):
            return []
        if allowed is not None and self.vectors.kind != "flat" and len(allowed) <= self.description.vectors.exact_threshold:
            # A small filtered set is searched exactly: an approximate index only looks at the
            # lists or graph nodes near the query, which may hold few studies of the subset.
            ids, scores = _exact_top(self.store.vectors(allowed.tolist()), allowed, query[0], wanted)
        else:
            scores, ids = self.vectors.search(query, min(wanted, len(self.vectors)), allowed)
            scores, ids = scores[0], ids[0]
        ranked = [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and int(i) not in exclude][:k]
        records = self.store.records([i for i, _ in ranked])
        return [Hit(score, records[i]) for i, score in ranked if i in records]


def _exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors @ query
    order = np.lexsort((ids, -scores))[:k]  # best first; equal scores by id, as FAISS does
    return ids[order], scores[order]
