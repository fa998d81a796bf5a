"""Datasets: a manifest + a reader + a transform -> tensors ready for a model.

Two flavours share one item loader:
- :class:`StudyDataset`, lazy, for DataLoaders over large archives;
- :func:`load_studies`, eager, which reads every study once into memory. The demo-size
  cohort fits in memory, and pretraining / binding revisit each study many times, so paying
  the DICOM/NIfTI/WFDB decoding once is what keeps the demo fast on a 2-core CPU.

Bad items either raise (``on_error="raise"``, the default) or are skipped, counted and
reported (``on_error="skip"``): nothing is dropped silently.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import Dataset

from m3bind.data.manifest import Manifest
from m3bind.errors import DataError

OnError = Literal["raise", "skip"]


@dataclass
class SkippedItem:
    row: int          # 1-based data row in the manifest
    path: str
    problem: str

    def __str__(self) -> str:
        return f"row {self.row} ({self.path}): {self.problem}"


def load_item(manifest: Manifest, i: int, transform: Callable) -> torch.Tensor:
    """Read and preprocess study ``i``; any failure becomes a DataError naming the file and row."""
    from m3bind.data.readers import read_study  # readers import heavy format libraries

    path = manifest.absolute_path(i)
    try:
        study = read_study(path)
        tensor = transform(study)
    except DataError as exc:
        raise DataError(exc.path or path, exc.problem, row=i + 1) from exc
    if not torch.isfinite(tensor).all():
        raise DataError(path, "non-finite values after preprocessing", row=i + 1)
    return tensor


class StudyDataset(Dataset):
    """Lazy dataset: item ``i`` is ``{"image", "text", "labels", "row", "patient_id"}``.

    With ``on_error="skip"`` a bad item yields ``None`` (drop it with :func:`collate_studies`)
    and is recorded in ``self.skipped``.
    """

    def __init__(self, manifest: Manifest, transform: Callable, on_error: OnError = "raise"):
        self.manifest = manifest
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[SkippedItem] = []

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int) -> dict | None:
        try:
            image = load_item(self.manifest, i, self.transform)
        except DataError as exc:
            if self.on_error == "raise":
                raise
            self.skipped.append(SkippedItem(i + 1, str(self.manifest.table.at[i, "path"]), exc.problem))
            return None
        table = self.manifest.table
        return {"image": image, "text": str(table.at[i, "text"]), "labels": self.manifest.labels(i),
                "row": i + 1, "patient_id": str(table.at[i, "patient_id"])}


def collate_studies(items: list[dict | None]) -> dict | None:
    """Stack images, keep texts/labels as lists, drop skipped (None) items."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    return {"image": torch.stack([item["image"] for item in items]),
            "text": [item["text"] for item in items],
            "labels": [item["labels"] for item in items],
            "row": [item["row"] for item in items],
            "patient_id": [item["patient_id"] for item in items]}


@dataclass
class LoadedStudies:
    """Every usable study of a manifest, preprocessed and held in memory."""

    images: torch.Tensor
    texts: list[str]
    labels: list[list[str]]
    patient_ids: list[str]
    rows: list[int]
    skipped: list[SkippedItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def load_studies(manifest: Manifest, transform: Callable, on_error: OnError = "raise",
                 workers: int = 2, progress: Callable[[int, int], None] | None = None) -> LoadedStudies:
    """Read and preprocess every row of ``manifest`` (threads: the readers release the GIL in I/O and numpy)."""
    n = len(manifest)

    def attempt(i: int) -> torch.Tensor | DataError:
        try:
            return load_item(manifest, i, transform)
        except DataError as exc:
            if on_error == "raise":
                raise
            return exc

    results: list[torch.Tensor | DataError] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, result in enumerate(pool.map(attempt, range(n)), start=1):
            results.append(result)
            if progress is not None:
                progress(done, n)

    keep = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    skipped = [SkippedItem(i + 1, str(manifest.table.at[i, "path"]), results[i].problem)
               for i, r in enumerate(results) if isinstance(r, DataError)]
    if not keep:
        raise DataError(manifest.source, f"no usable studies ({len(skipped)} skipped; first: {skipped[0] if skipped else '-'})")
    table = manifest.table
    return LoadedStudies(
        images=torch.stack([results[i] for i in keep]),
        texts=[str(table.at[i, "text"]) for i in keep],
        labels=[manifest.labels(i) for i in keep],
        patient_ids=[str(table.at[i, "patient_id"]) for i in keep],
        rows=[i + 1 for i in keep],
        skipped=skipped,
    )
