"""Datasets: a manifest + a reader + a transform -> tensors ready for a model.

- :class:`StudyDataset` reads and preprocesses one study per item; a
  ``torch.utils.data.DataLoader`` with worker processes runs it over a split in parallel.
- :func:`stream_studies` writes a split once through such a DataLoader into a
  :class:`~m3bind.data.store.RowStore` on disk and returns a :class:`StudySet`: the studies'
  metadata in memory, their preprocessed tensors on disk, read a batch at a time. Training
  revisits each study many times, so the DICOM/NIfTI/WFDB decoding is paid once, and no split
  is ever held in memory whole.

Bad items either raise (``on_error="raise"``, the default) or are skipped, counted and
reported (``on_error="skip"``): nothing is dropped silently.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from m3bind.data.limits import ReadLimits
from m3bind.data.manifest import Manifest
from m3bind.errors import DataError

OnError = Literal["raise", "skip"]


@dataclass
class SkippedItem:
    row: int          # 1-based data row in the manifest file (not in its split), for messages
    path: str
    problem: str
    index: int | None = None  # 0-based row in the split's table it was read from

    @classmethod
    def from_meta(cls, manifest: Manifest, saved: dict) -> "SkippedItem":
        """One saved in a study cache's meta.json, its file row taken from the manifest now (a
        cache saved before ``index`` was kept stored the split's 1-based row as ``row``)."""
        index = int(saved["index"]) if saved.get("index") is not None else int(saved["row"]) - 1
        return cls(manifest.file_row(index), str(saved["path"]), str(saved["problem"]), index)

    def __str__(self) -> str:
        return f"row {self.row} ({self.path}): {self.problem}"


def load_item(manifest: Manifest, i: int, transform: Callable, limits: ReadLimits | None = None) -> torch.Tensor:
    """Read and preprocess study ``i``; any failure becomes a DataError naming the file and row."""
    return load_item_noting(manifest, i, transform, limits)[0]


def load_item_noting(manifest: Manifest, i: int, transform: Callable,
                     limits: ReadLimits | None = None) -> tuple[torch.Tensor, list[str]]:
    """:func:`load_item`, and what reading left out of the file (:func:`read_notes`)."""
    from m3bind.data.readers import read_study  # readers import heavy format libraries

    path = manifest.absolute_path(i)
    try:
        study = read_study(path, limits=limits or ReadLimits())
        tensor = transform(study)
    except DataError as exc:
        raise DataError(exc.path or path, exc.problem, row=manifest.file_row(i)) from exc
    if not torch.isfinite(tensor).all():
        raise DataError(path, "non-finite values after preprocessing", row=manifest.file_row(i))
    return tensor, read_notes(study.meta)


def read_notes(meta: dict) -> list[str]:
    """What a reader left out of a study file that a user would want to know about: ECG channels
    that are not one of the standard 12 leads (Frank leads, a rhythm strip), and the other
    series of a DICOM folder (a scout, a localizer)."""
    notes = []
    if meta.get("dropped_channels"):
        notes.append(f"channels not used: {', '.join(map(str, meta['dropped_channels']))}")
    if meta.get("other_series_left_out"):
        notes.append(f"{len(meta['other_series_left_out'])} other DICOM series in the folder left out (the study "
                     "is its series with the most slices)")
    return notes


@dataclass
class ReadNote:
    """One kind of :func:`read_notes` note and the studies of a split it applies to."""

    note: str
    count: int
    first: str  # "row N (path)" of the first study, for the user to look at

    def __str__(self) -> str:
        return f"{self.count} studies: {self.note} (first: {self.first})"


def collect_read_notes(manifest: Manifest, items: list[dict]) -> list[ReadNote]:
    """The notes of a split's studies (items of a :class:`StudyDataset` over ``manifest``) grouped
    by note, in order of first appearance."""
    grouped: dict[str, ReadNote] = {}
    for item in items:
        for note in item.get("notes", ()):
            if note in grouped:
                grouped[note].count += 1
            else:
                i = item["row"] - 1
                grouped[note] = ReadNote(note, 1, f"row {manifest.file_row(i)} ({manifest.table.at[i, 'path']})")
    return list(grouped.values())


class StudyDataset(Dataset):
    """Lazy dataset: item ``i`` is ``{"image", "text", "labels", "row", "patient_id"}``; an
    unreadable study raises :class:`DataError` naming its file and row."""

    def __init__(self, manifest: Manifest, transform: Callable, limits: ReadLimits | None = None):
        self.manifest = manifest
        self.transform = transform
        self.limits = limits

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict:
        image, notes = load_item_noting(self.manifest, i, self.transform, self.limits)
        table = self.manifest.table
        return {"image": image, "text": str(table.at[i, "text"]), "labels": self.manifest.labels(i),
                "row": i + 1, "patient_id": str(table.at[i, "patient_id"]), "notes": notes}


def default_workers() -> int:
    """DataLoader worker processes: one per spare core, at most 8 (decoding is I/O and numpy)."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def cache_workers() -> int:
    """Worker processes that fill the on-disk study cache: one per core, at most 8. The main
    process only stacks and writes the decoded rows meanwhile, so it needs no core of its own."""
    return max(1, min(8, os.cpu_count() or 2))


@dataclass
class StudySet:
    """Every usable study of a split: metadata in memory, preprocessed tensors in ``images``.

    ``images`` is a :class:`~m3bind.data.store.RowStore` (on disk; ``images[index]`` reads those
    rows) or, for small in-memory sets built by hand, a tensor; both index the same way.
    """

    images: object
    texts: list[str]
    labels: list[list[str]]
    patient_ids: list[str]
    rows: list[int]
    skipped: list[SkippedItem] = field(default_factory=list)
    read_notes: list[ReadNote] = field(default_factory=list)  # what reading left out of the files
    # What the rows are (modality, split and the cache key of the manifest rows, files and
    # preprocessing), so that tables computed from them can be found again; "" for hand-built sets.
    key: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def _keep_all(items: list[dict | None]) -> list[dict | None]:
    return items


class StreamedImages:
    """The preprocessed studies of a split, read from their files on every access.

    Indexes like the on-disk cache (:class:`~m3bind.data.store.RowStore`) and returns the same
    rows, but keeps no copy of the split: ``images[index]`` reads and preprocesses those studies
    through a DataLoader with worker processes. For studies a frozen tower embeds once per stage,
    where a copy on disk would cost more than it saves (221 MB per published-size CT volume).
    An unreadable study raises a DataError naming its file and row.
    """

    def __init__(self, manifest: Manifest, transform: Callable, limits: ReadLimits | None = None,
                 workers: int | None = None, positions: np.ndarray | None = None):
        self.studies = StudyDataset(manifest, transform, limits)
        self.workers = default_workers() if workers is None else workers
        self.positions = np.arange(len(manifest)) if positions is None else positions
        self._row_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._row_shape is None:  # one study read once: batch sizes are chosen from it
            self._row_shape = tuple(self._read(self.positions[:1]).shape[1:])
        return (len(self), *self._row_shape)

    def __getitem__(self, index) -> torch.Tensor:
        from m3bind.data.store import _as_positions

        rows = self._read(self.positions[_as_positions(index, len(self))])
        return rows[0] if isinstance(index, (int, np.integer)) else rows

    def subset(self, index) -> "StreamedImages":
        from m3bind.data.store import _as_positions

        studies = self.studies
        subset = StreamedImages(studies.manifest, studies.transform, studies.limits, self.workers,
                                positions=self.positions[_as_positions(index, len(self))])
        subset._row_shape = self._row_shape
        return subset

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """``self[0:batch_size]``, ``self[batch_size:2 * batch_size]``, ...: one DataLoader whose
        workers decode the next batches while the caller encodes this one (what
        :func:`~m3bind.models.embedding.embed_in_batches` uses)."""
        for items in self._loader(self.positions, batch_size):
            yield self._stack(items)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        # One chunk per worker (the loader returns them in order), so every worker decodes.
        chunk = max(1, -(-len(rows) // max(1, min(self.workers, len(rows)))))
        return self._stack([item for items in self._loader(rows, chunk) for item in items])

    def _loader(self, rows: np.ndarray, batch_size: int) -> DataLoader:
        workers = min(self.workers, -(-len(rows) // batch_size))
        return DataLoader(Subset(_Attempts(self.studies), rows.tolist()), batch_size=batch_size,
                          num_workers=workers, collate_fn=_keep_all,
                          generator=torch.Generator().manual_seed(0))  # not the global RNG

    def _stack(self, items: list) -> torch.Tensor:
        for item in items:
            if isinstance(item, SkippedItem):
                raise DataError(self.studies.manifest.root / item.path, item.problem, row=item.row)
        if not items:
            return torch.empty((0, *(self._row_shape or ())))
        return torch.stack([item["image"] for item in items]).float()


def stream_studies(manifest: Manifest, transform: Callable, directory: Path, on_error: OnError = "raise",
                   workers: int | None = None, batch_size: int = 16, limits: ReadLimits | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[StudySet, list[dict]]:
    """Read and preprocess every row of ``manifest`` through a DataLoader into a store at ``directory``.

    Returns the set and the per-study metadata rows (for the caller to save beside the store).
    """
    from m3bind.data.store import RowStore, RowWriter

    dataset = _Attempts(StudyDataset(manifest, transform, limits))
    workers = cache_workers() if workers is None else workers
    # The loader's own generator: drawing worker seeds from the global RNG would make training
    # after a cold cache differ from training after a warm one (LoRA dropout uses that RNG).
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_keep_all,
                        generator=torch.Generator().manual_seed(0))
    kept: list[dict] = []
    skipped: list[SkippedItem] = []
    done = 0
    with RowWriter(directory) as writer:
        for batch in loader:
            good = [item for item in batch if isinstance(item, dict)]
            bad = [item for item in batch if isinstance(item, SkippedItem)]
            if bad and on_error == "raise":
                raise DataError(manifest.root / bad[0].path, bad[0].problem, row=bad[0].row)
            skipped += bad
            if good:
                writer.append(torch.stack([item.pop("image") for item in good]))
                kept += good
            done += len(batch)
            if progress is not None:
                progress(done, len(dataset))
    if not kept:
        raise DataError(manifest.source, f"no usable studies ({len(skipped)} skipped; first: "
                                         f"{skipped[0] if skipped else '-'})")
    studies = StudySet(images=RowStore(directory), texts=[k["text"] for k in kept],
                       labels=[k["labels"] for k in kept], patient_ids=[k["patient_id"] for k in kept],
                       rows=[k["row"] for k in kept], skipped=skipped, read_notes=collect_read_notes(manifest, kept))
    return studies, kept


class _Attempts(Dataset):
    """Item ``i`` of ``studies``, or the SkippedItem saying why it could not be read (a worker
    process hands errors back as values: raised there, they would arrive as a generic
    RuntimeError without the file and row)."""

    def __init__(self, studies: StudyDataset):
        self.studies = studies

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int):
        try:
            return self.studies[i]
        except DataError as exc:
            manifest = self.studies.manifest
            return SkippedItem(manifest.file_row(i), str(manifest.table.at[i, "path"]), exc.problem, index=i)
