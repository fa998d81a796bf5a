"""Building an index: embed the studies of manifests, add to or remove from an index, merge shards.

Every study is committed with its batch, so running the same command again after an
interruption embeds only what is missing: no study twice, none lost. Studies are keyed by
absolute path; a path already in the index is never embedded again (``--add`` with a manifest
that was indexed before only adds its new rows).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m3bind.data.datasets import OnError
from m3bind.data.manifest import read_manifest
from m3bind.errors import CheckpointError
from m3bind.search.embedding import (PlannedStudy, Preprocessed, RepeatedRow, SkippedStudy, embed_studies,
                                     plan_studies)
from m3bind.search.layout import METADATA_FILE, ModelRecord, ShardRecord, read_index_description
from m3bind.search.model_identity import SearchModel
from m3bind.search.store import MetadataStore, StudyRecord
from m3bind.search.vectors import VectorIndexSettings
from m3bind.search.writer import IndexWriter

# (studies done, studies to do): called after every committed batch.
Progress = Callable[[int, int], None]


@dataclass
class BuildReport:
    index: Path
    embedded: int                 # studies embedded by this run
    already_indexed: int          # studies of the manifests that were in the index before
    total: int                    # studies in the index now
    kind: str                     # the vector index kind now in use
    seconds: float
    skipped: list[SkippedStudy] = field(default_factory=list)
    removed: int = 0
    repeated: list[RepeatedRow] = field(default_factory=list)  # rows naming an already listed study


def model_record(model: SearchModel) -> ModelRecord:
    return ModelRecord(fingerprint=model.fingerprint, folder=str(model.folder.resolve()),
                       shared_dim=model.encoder.shared_dim, modalities=list(model.encoder.modalities))


def build_index(model: SearchModel, manifests: Sequence[str | Path], out: str | Path, *, add: bool = False,
                modality: str | None = None, settings: VectorIndexSettings | None = None,
                shard: ShardRecord | None = None, on_error: OnError = "raise", batch_size: int = 32,
                workers: int = 2, progress: Progress | None = None,
                preprocessed: Preprocessed | None = None) -> BuildReport:
    """Embed every study of ``manifests`` into the index at ``out`` (created, resumed or, with ``add``, extended).

    ``modality`` fills the modality of manifests without a ``modality`` column. ``shard``
    keeps only that shard's share of the studies (see :func:`~m3bind.search.embedding.shard_of`).
    ``on_error="skip"`` skips unusable files and reports them instead of stopping at the first.
    ``preprocessed`` gives studies the model's transforms have already made (see
    :func:`~m3bind.search.embedding.embed_studies`); they are not read from their files again.
    """
    start = time.perf_counter()
    tables = [read_manifest(path, modality=modality, check_files=False) for path in manifests]
    writer = IndexWriter.open(Path(out), model_record(model), create=not add, resume_finished=add,
                              settings=settings, shard=shard)
    try:
        repeated: list[RepeatedRow] = []
        planned, skipped = plan_studies(tables, model.encoder.modalities, shard=shard, on_error=on_error,
                                        repeated=repeated)
        indexed = writer.store.indexed_paths([study.path for study in planned])
        pending = [study for study in planned if study.path not in indexed]
        done = embedded = 0
        for batch in embed_studies(model.encoder, tables, pending, batch_size=batch_size, workers=workers,
                                   on_error=on_error, preprocessed=preprocessed):
            writer.add([_record(tables, study) for study in batch.studies], batch.vectors)
            skipped += batch.skipped
            embedded += len(batch.studies)
            done += len(batch.studies) + len(batch.skipped)
            if progress is not None:
                progress(done, len(pending))
        kind = writer.finish()
        return BuildReport(Path(out), embedded=embedded, already_indexed=len(indexed), total=writer.store.count(),
                           kind=kind, seconds=time.perf_counter() - start, skipped=skipped, repeated=repeated)
    finally:
        writer.close()


def _record(tables, study: PlannedStudy) -> StudyRecord:
    manifest = tables[study.manifest]
    table = manifest.table
    return StudyRecord(path=study.path, modality=study.modality, patient_id=str(table.at[study.row, "patient_id"]),
                       labels=manifest.labels(study.row), report=str(table.at[study.row, "text"]),
                       manifest=os.path.abspath(manifest.source), manifest_row=study.row + 1)


def remove_studies(model: SearchModel, index: str | Path, ids: Sequence[int]) -> BuildReport:
    """Remove studies by id (every id must be in the index); the model must be the index's own."""
    start = time.perf_counter()
    writer = IndexWriter.open(Path(index), model_record(model), create=False, resume_finished=True)
    try:
        writer.remove(list(dict.fromkeys(int(i) for i in ids)))
        kind = writer.finish()
        return BuildReport(Path(index), embedded=0, already_indexed=0, total=writer.store.count(), kind=kind,
                           seconds=time.perf_counter() - start, removed=len(set(ids)))
    finally:
        writer.close()


def merge_indexes(shards: Sequence[str | Path], out: str | Path, *, settings: VectorIndexSettings | None = None,
                  progress: Progress | None = None) -> BuildReport:
    """Merge finished shard indexes of one model into a new index at ``out`` (resumable like a build).

    Every shard must be finished; when the shards were built with ``shard=i/n``, all n of
    them must be given. A study in two shards is kept once.
    """
    start = time.perf_counter()
    folders = [Path(folder) for folder in shards]
    descriptions = [read_index_description(folder) for folder in folders]
    _check_shards(folders, descriptions)
    first = descriptions[0]
    writer = IndexWriter.open(Path(out), first.model, create=True, resume_finished=False,
                              settings=settings or first.vectors)
    try:
        stores = [MetadataStore.open(folder / METADATA_FILE, first.model.shared_dim) for folder in folders]
        total = sum(store.count() for store in stores)
        done = embedded = already = 0
        for store in stores:
            try:
                for records, vectors in store.iter_studies():
                    present = writer.store.indexed_paths([record.path for record in records])
                    keep = [i for i, record in enumerate(records) if record.path not in present]
                    writer.add([_without_id(records[i]) for i in keep], vectors[keep])
                    embedded += len(keep)
                    already += len(records) - len(keep)
                    done += len(records)
                    if progress is not None:
                        progress(done, total)
            finally:
                store.close()
        kind = writer.finish()
        return BuildReport(Path(out), embedded=embedded, already_indexed=already, total=writer.store.count(),
                           kind=kind, seconds=time.perf_counter() - start)
    finally:
        writer.close()


def _check_shards(folders: list[Path], descriptions) -> None:
    if not folders:
        raise CheckpointError("no shard indexes to merge")
    if len({folder.resolve() for folder in folders}) != len(folders):
        raise CheckpointError("the same shard folder is given twice")
    first = descriptions[0]
    for folder, description in zip(folders, descriptions):
        if description.model.fingerprint != first.model.fingerprint:
            raise CheckpointError(f"{folder}: made by another model than {folders[0]}; shards of one index "
                                  "must come from one model")
        store = MetadataStore.open(folder / METADATA_FILE, description.model.shared_dim)
        try:
            if store.state("build_finished") != "1":
                raise CheckpointError(f"{folder}: this shard's build did not finish; run its index command "
                                      "again to complete it before merging")
        finally:
            store.close()
    shard_records = [d.shard for d in descriptions if d.shard is not None]
    if shard_records:
        counts = {record.count for record in shard_records}
        if len(shard_records) != len(descriptions) or len(counts) != 1:
            raise CheckpointError("the folders are not shards of one split (mixed shard counts, or shards "
                                  "mixed with whole indexes)")
        count = counts.pop()
        indices = [record.index for record in shard_records]
        if len(set(indices)) != len(indices):
            raise CheckpointError(f"a shard is given twice (shards {', '.join(f'{i}/{count}' for i in indices)})")
        missing = sorted(set(range(count)) - {record.index for record in shard_records})
        if missing:
            raise CheckpointError(f"shards {', '.join(f'{i}/{count}' for i in missing)} are missing; merge "
                                  f"all {count} shards")


def _without_id(record: StudyRecord) -> StudyRecord:
    return StudyRecord(**{**record.to_json(), "id": None})
