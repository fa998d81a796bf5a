"""The files of an index folder and its JSON description.

    index.json        what made the index (model fingerprint, shared width, modalities),
                      the vector index settings, and the shard it is when built in parts
    metadata.sqlite   one row per study (path, modality, patient, labels, report, manifest)
                      and its embedding; the source of truth, committed batch by batch
    vectors.faiss     the FAISS index over those embeddings, rebuilt from the table when stale
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, model_validator

from m3bind.models.descriptions import Description, read_description, write_description
from m3bind.search.vectors import VectorIndexSettings

DESCRIPTION_FILE = "index.json"
METADATA_FILE = "metadata.sqlite"
VECTORS_FILE = "vectors.faiss"


class ModelRecord(BaseModel):
    """The model whose embeddings fill the index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    folder: str = Field(description="Where the model was when the index was made (for messages only).")
    shared_dim: PositiveInt
    modalities: list[str]


class ShardRecord(BaseModel):
    """Shard ``index`` of ``count``: the studies whose path hash is ``index`` modulo ``count``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: NonNegativeInt
    count: PositiveInt

    @model_validator(mode="after")
    def _index_below_count(self) -> "ShardRecord":
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} must be below the shard count {self.count}")
        return self

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class IndexDescription(Description):
    """``index.json`` of a search index."""

    version_field: ClassVar[str | None] = "format"
    folder_kind: ClassVar[str] = "an m3bind search index"
    trailing_newline: ClassVar[bool] = True

    format: int = 1
    model: ModelRecord
    vectors: VectorIndexSettings = VectorIndexSettings()
    shard: ShardRecord | None = None


def read_index_description(folder: Path) -> IndexDescription:
    return read_description(folder / DESCRIPTION_FILE, IndexDescription)


def write_index_description(folder: Path, description: IndexDescription) -> Path:
    return write_description(folder / DESCRIPTION_FILE, description)
