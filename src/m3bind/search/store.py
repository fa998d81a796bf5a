"""The metadata table of an index (SQLite): one row per study and its embedding.

The table is the index's source of truth. Each batch of studies is written in one transaction
(metadata, labels and vectors together), so an interrupted build keeps every finished batch
and never half of one; the FAISS file is derived from it. A ``generation`` counter goes up
with every change, so a FAISS file that lags behind the table can be recognised.

Ids come from ``AUTOINCREMENT``: an id is never given to another study after a removal, so
an id a user saw (a URL of the server, a result printed earlier) keeps meaning one study.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from m3bind.data.manifest import LABEL_SEPARATOR
from m3bind.errors import CheckpointError, DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    report TEXT NOT NULL,
    manifest TEXT NOT NULL,
    manifest_row INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS studies_by_modality ON studies (modality);
CREATE INDEX IF NOT EXISTS studies_by_patient ON studies (patient_id);
CREATE TABLE IF NOT EXISTS study_labels (
    label TEXT NOT NULL,
    study_id INTEGER NOT NULL,
    PRIMARY KEY (label, study_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = "id, path, modality, patient_id, labels, report, manifest, manifest_row"
# SQLite's default limit on bound parameters is 32766; stay well below it.
_CHUNK = 900


@dataclass
class StudyRecord:
    """One indexed study. ``path`` is absolute; ``manifest_row`` is 1-based (header excluded)."""

    path: str
    modality: str
    patient_id: str
    labels: list[str]
    report: str
    manifest: str
    manifest_row: int
    id: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


class MetadataStore:
    """The SQLite table of one index; safe to share between threads (one lock per store)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, dim: int):
        self.path = path
        self.dim = dim
        self._conn = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, dim: int, writable: bool = False) -> "MetadataStore":
        if writable:
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            connection.executescript(_SCHEMA)
        else:
            if not path.is_file():
                raise CheckpointError(f"{path}: metadata table not found")
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         check_same_thread=False, isolation_level=None)
        try:
            connection.execute("SELECT count(*) FROM studies").fetchone()
        except sqlite3.DatabaseError as error:
            connection.close()
            raise CheckpointError(f"{path}: not an index metadata table: {error}") from error
        return cls(path, connection, dim)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- state ------------------------------------------------------------------------
    def state(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_state(self, **values: str | int) -> None:
        with self._lock, self._transaction():
            self._set_state(values)

    def generation(self) -> int:
        return int(self.state("generation", "0"))

    def _set_state(self, values: dict) -> None:
        self._conn.executemany("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                               [(key, str(value)) for key, value in values.items()])

    def _bump_generation(self) -> None:
        row = self._conn.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        self._set_state({"generation": int(row[0]) + 1 if row else 1})

    def _transaction(self):
        return _Transaction(self._conn)

    # --- writing ----------------------------------------------------------------------
    def insert(self, records: Sequence[StudyRecord], vectors: np.ndarray) -> list[int]:
        """Add studies and their embeddings in one transaction; returns their new ids."""
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        blobs = np.ascontiguousarray(vectors, dtype="<f4").reshape(len(records), self.dim)
        ids = []
        with self._lock, self._transaction():
            for record, blob in zip(records, blobs):
                try:
                    cursor = self._conn.execute(
                        "INSERT INTO studies (path, modality, patient_id, labels, report, manifest, manifest_row) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (record.path, record.modality, record.patient_id, LABEL_SEPARATOR.join(record.labels),
                         record.report, record.manifest, record.manifest_row))
                except sqlite3.IntegrityError as error:
                    raise CheckpointError(f"{self.path}: {record.path} is already indexed; is another "
                                          "process writing this index?") from error
                study_id = int(cursor.lastrowid)
                self._conn.executemany("INSERT OR IGNORE INTO study_labels (label, study_id) VALUES (?, ?)",
                                       [(label, study_id) for label in record.labels])
                self._conn.execute("INSERT INTO vectors (id, vector) VALUES (?, ?)", (study_id, blob.tobytes()))
                ids.append(study_id)
            self._bump_generation()
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        """Delete studies by id in one transaction; every id must be in the index."""
        missing = sorted(set(ids) - set(self.existing_ids(ids)))
        if missing:
            raise DataError(self.path, f"no studies with id {', '.join(map(str, missing))} in this index")
        with self._lock, self._transaction():
            for chunk in _chunks(list(ids)):
                marks = _marks(chunk)
                for sql in (f"DELETE FROM studies WHERE id IN ({marks})",
                            f"DELETE FROM study_labels WHERE study_id IN ({marks})",
                            f"DELETE FROM vectors WHERE id IN ({marks})"):
                    self._conn.execute(sql, chunk)
            self._bump_generation()

    # --- reading ----------------------------------------------------------------------
    def last_id(self) -> int:
        """The largest id ever given (removed studies included); every new study gets a larger one."""
        with self._lock:
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'studies'").fetchone()
        return 0 if row is None else int(row[0])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM studies").fetchone()[0])

    def modality_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT modality, count(*) FROM studies GROUP BY modality ORDER BY modality")
            return {modality: int(n) for modality, n in rows}

    def indexed_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` that are already in the index."""
        found: set[str] = set()
        with self._lock:
            for chunk in _chunks(list(paths)):
                rows = self._conn.execute(f"SELECT path FROM studies WHERE path IN ({_marks(chunk)})", chunk)
                found.update(path for (path,) in rows)
        return found

    def existing_ids(self, ids: Sequence[int]) -> list[int]:
        found = []
        with self._lock:
            for chunk in _chunks([int(i) for i in ids]):
                found += [i for (i,) in self._conn.execute(
                    f"SELECT id FROM studies WHERE id IN ({_marks(chunk)})", chunk)]
        return found

    def record(self, study_id: int) -> StudyRecord | None:
        return self.records([study_id]).get(study_id)

    def records(self, ids: Sequence[int]) -> dict[int, StudyRecord]:
        out = {}
        with self._lock:
            for chunk in _chunks([int(i) for i in ids]):
                for row in self._conn.execute(f"SELECT {_COLUMNS} FROM studies WHERE id IN ({_marks(chunk)})", chunk):
                    out[row[0]] = _record(row)
        return out

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The embeddings of ``ids``, in that order (every id must be indexed)."""
        found: dict[int, np.ndarray] = {}
        with self._lock:
            for chunk in _chunks([int(i) for i in ids]):
                for study_id, blob in self._conn.execute(
                        f"SELECT id, vector FROM vectors WHERE id IN ({_marks(chunk)})", chunk):
                    found[study_id] = self._decode(blob, study_id)
        missing = [i for i in ids if int(i) not in found]
        if missing:
            raise DataError(self.path, f"no studies with id {', '.join(map(str, missing))} in this index")
        return np.stack([found[int(i)] for i in ids]) if len(ids) else np.empty((0, self.dim), np.float32)

    def iter_vectors(self, chunk_size: int = 50_000, after_id: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) in id order, ``chunk_size`` at a time (bounded memory for any index size)."""
        last = after_id
        while True:
            with self._lock:
                rows = self._conn.execute("SELECT id, vector FROM vectors WHERE id > ? ORDER BY id LIMIT ?",
                                          (last, chunk_size)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield (np.array([r[0] for r in rows], dtype=np.int64),
                   np.stack([self._decode(blob, study_id) for study_id, blob in rows]))

    def iter_studies(self, chunk_size: int = 10_000) -> Iterator[tuple[list[StudyRecord], np.ndarray]]:
        """(records, vectors) in id order, a chunk at a time."""
        for ids, vectors in self.iter_vectors(chunk_size):
            records = self.records(ids.tolist())
            yield [records[int(i)] for i in ids], vectors

    def all_ids(self) -> np.ndarray:
        with self._lock:
            return np.fromiter((i for (i,) in self._conn.execute("SELECT id FROM vectors ORDER BY id")), dtype=np.int64)

    def filter_ids(self, modalities: Sequence[str] | None = None, labels: Sequence[str] | None = None,
                   patient: str | None = None) -> np.ndarray:
        """Ids of the studies of any of ``modalities``, having every one of ``labels``, of ``patient``."""
        where, params = [], []
        if modalities:
            where.append(f"modality IN ({_marks(modalities)})")
            params += list(modalities)
        if patient is not None:
            where.append("patient_id = ?")
            params.append(patient)
        for label in dict.fromkeys(labels or ()):
            where.append("id IN (SELECT study_id FROM study_labels WHERE label = ?)")
            params.append(label)
        sql = "SELECT id FROM studies" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._lock:
            return np.fromiter((i for (i,) in self._conn.execute(sql, params)), dtype=np.int64)

    def _decode(self, blob: bytes, study_id: int) -> np.ndarray:
        if len(blob) != 4 * self.dim:
            raise CheckpointError(f"{self.path}: the vector of study {study_id} has {len(blob)} bytes, "
                                  f"expected {4 * self.dim} ({self.dim} float32)")
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises (autocommit connection)."""

    def __init__(self, connection: sqlite3.Connection):
        self._conn = connection

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")


def _record(row: tuple) -> StudyRecord:
    study_id, path, modality, patient_id, labels, report, manifest, manifest_row = row
    return StudyRecord(path=path, modality=modality, patient_id=patient_id,
                       labels=[label for label in labels.split(LABEL_SEPARATOR) if label], report=report,
                       manifest=manifest, manifest_row=int(manifest_row), id=int(study_id))


def _marks(values: Sequence) -> str:
    return ", ".join("?" * len(values))


def _chunks(values: list) -> Iterator[list]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]
