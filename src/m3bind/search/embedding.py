"""Streaming studies of many manifests through a bound model, one batch at a time.

:func:`plan_studies` turns manifests into the list of studies to embed (absolute path,
modality, manifest row), keeping only one shard's share when asked. :func:`embed_studies`
reads and preprocesses them in DataLoader workers and yields embedded batches, one modality at
a time (a batch must have one shape and one encoder). Memory is bounded by the batches in
flight (``workers * 2`` prefetched plus the one being embedded), whatever the archive's size.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from m3bind.data.datasets import OnError, load_item
from m3bind.data.manifest import Manifest
from m3bind.errors import DataError
from m3bind.models.bound import M3Bind
from m3bind.search.layout import ShardRecord


@dataclass(frozen=True)
class PlannedStudy:
    manifest: int        # position in the list of manifests
    row: int             # 0-based data row of that manifest
    path: str            # absolute path, the study's key in the index
    modality: str


@dataclass(frozen=True)
class SkippedStudy:
    path: str
    problem: str        # names the file, the problem and the manifest row


@dataclass
class EmbeddedBatch:
    modality: str
    studies: list[PlannedStudy]
    vectors: np.ndarray                       # (len(studies), shared_dim) float32
    skipped: list[SkippedStudy] = field(default_factory=list)


def shard_of(path: str, count: int) -> int:
    """The shard a study belongs to: a stable hash of its absolute path, modulo ``count``.

    Hashing the path (rather than counting rows) gives the same answer in every process and on
    every machine that sees the archive at the same path, and puts a study listed in two
    manifests into one shard only.
    """
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % count


@dataclass(frozen=True)
class RepeatedRow:
    """A manifest row naming a study an earlier row already named: the study is indexed once,
    with the first row's report and labels."""

    manifest: str
    row: int                  # 1-based, as in every error naming a row
    first: str                # "<manifest>, row N" of the row that was kept


def plan_studies(manifests: Sequence[Manifest], modalities: Sequence[str], *, shard: ShardRecord | None = None,
                 on_error: OnError = "raise",
                 repeated: list[RepeatedRow] | None = None) -> tuple[list[PlannedStudy], list[SkippedStudy]]:
    """Every study of ``manifests`` (each path once), or the ``shard``'s share of them.

    A row whose modality the model does not have is a DataError naming the manifest and row,
    or a skipped study with ``on_error="skip"``. Rows naming a study again are appended to
    ``repeated`` when given (they are not studies of their own, so nothing is lost, but a
    manifest listing a file twice is usually a mistake the user wants to hear about).
    """
    planned: list[PlannedStudy] = []
    skipped: list[SkippedStudy] = []
    seen: dict[str, str] = {}
    for position, manifest in enumerate(manifests):
        table = manifest.table
        for row in range(len(manifest)):
            path = os.path.abspath(manifest.absolute_path(row))
            if shard is not None and shard_of(path, shard.count) != shard.index:
                continue
            if path in seen:
                if repeated is not None:
                    repeated.append(RepeatedRow(str(manifest.source), row + 1, seen[path]))
                continue
            seen[path] = f"{manifest.source}, row {row + 1}"
            modality = str(table.at[row, "modality"])
            if modality not in modalities:
                problem = (f"modality '{modality}' is not one of the model's ({', '.join(modalities)})"
                           if modality else "no modality: add a 'modality' column, or say it for the whole "
                                            "manifest (`m3bind index -m MODALITY`; one modality per call, --add "
                                            "for the next)")
                error = DataError(manifest.source, problem, row=row + 1, column="modality")
                if on_error == "raise":
                    raise error
                skipped.append(SkippedStudy(path, str(error)))
                continue
            planned.append(PlannedStudy(position, row, path, modality))
    return planned, skipped


class _StudyFiles(Dataset):
    """Item i: (i, preprocessed tensor, None), or (i, None, problem) for a study that cannot be used.

    Problems travel back as text: a DataError does not survive pickling between processes.
    """

    def __init__(self, manifests: Sequence[Manifest], studies: Sequence[PlannedStudy], transform: Callable):
        self.manifests = manifests
        self.studies = studies
        self.transform = transform

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        study = self.studies[i]
        manifest = self.manifests[study.manifest]
        try:
            return i, load_item(manifest, study.row, self.transform), None
        except DataError as error:
            # error.path may be more precise than the study's (one slice of a DICOM folder).
            return i, None, f"{error.path or study.path}: {error.problem} ({manifest.source}, row {study.row + 1})"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]):
    good = [(i, tensor) for i, tensor, _ in items if tensor is not None]
    failed = [(i, problem) for i, tensor, problem in items if tensor is None]
    images = torch.stack([tensor for _, tensor in good]) if good else None
    return [i for i, _ in good], images, failed


# Absolute study path -> (rows, position): the study already preprocessed by the model's own
# transforms, as row ``position`` of ``rows`` (an on-disk row store or a tensor).
Preprocessed = Mapping[str, tuple[object, int]]


def _read_preprocessed(preprocessed: Preprocessed, group: Sequence[PlannedStudy],
                       batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, list]]:
    """The batches the DataLoader would give for ``group``, read from copies already made."""
    for start in range(0, len(group), batch_size):
        positions = list(range(start, min(start + batch_size, len(group))))
        rows = [preprocessed[group[p].path] for p in positions]
        yield positions, torch.stack([torch.as_tensor(store[position]) for store, position in rows]), []


@torch.no_grad()
def embed_studies(model: M3Bind, manifests: Sequence[Manifest], studies: Sequence[PlannedStudy], *,
                  batch_size: int = 32, workers: int = 2, on_error: OnError = "raise",
                  preprocessed: Preprocessed | None = None) -> Iterator[EmbeddedBatch]:
    """Embedded batches of ``studies``, grouped by modality, in the order of the plan within a modality.

    With ``on_error="raise"`` the first unusable file raises a DataError naming it and its
    manifest row; the batches yielded before it are complete. A modality whose every study is
    in ``preprocessed`` is read from those copies instead of its files (the same tensors in the
    same batches, so the same vectors): decoding is most of an index build's time, and a run
    that has just evaluated the same studies holds them preprocessed already.
    """
    from m3bind.data.wsi import is_whole_slide

    for modality in dict.fromkeys(study.modality for study in studies):
        group = [study for study in studies if study.modality == modality]
        # A whole-slide image is one study too: its tissue tiles are embedded and pooled.
        slides = [study for study in group if is_whole_slide(study.path)]
        for study in slides:
            try:
                vector = model.encode_slide(study.path, modality).numpy()[None]
                yield EmbeddedBatch(modality, [study], vector, [])
            except DataError as error:
                problem = f"{study.path}: {error.problem} ({manifests[study.manifest].source}, row {study.row + 1})"
                if on_error == "raise":
                    raise DataError(None, problem) from error
                yield EmbeddedBatch(modality, [], np.empty((0, model.shared_dim), np.float32),
                                    [SkippedStudy(study.path, problem)])
        slide_paths = {study.path for study in slides}
        group = [study for study in group if study.path not in slide_paths]
        if not group:
            continue
        if preprocessed is not None and all(study.path in preprocessed for study in group):
            batches = _read_preprocessed(preprocessed, group, batch_size)
        else:
            batches = DataLoader(_StudyFiles(manifests, group, model.models[modality].transform()),
                                 batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                 prefetch_factor=2 if workers else None)
        for positions, images, failed in batches:
            if failed and on_error == "raise":
                raise DataError(None, failed[0][1])
            vectors = (model.encode_images(modality, images, batch_size=len(images)).numpy()
                       if images is not None else np.empty((0, model.shared_dim), np.float32))
            yield EmbeddedBatch(modality, [group[p] for p in positions], vectors,
                                [SkippedStudy(group[p].path, problem) for p, problem in failed])
