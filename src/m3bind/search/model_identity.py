"""Which saved model made an index: a fingerprint of the model folder, and loading a model for an index.

An index is only meaningful for the model that embedded it: another model (even one with the
same heads but a retrained student text encoder) answers in a different space, and its
queries would return confident nonsense. The fingerprint is the SHA-256 of every file of the
model folder (relative path and content, in sorted order), so any change to any weight,
tokenizer or description gives another fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from m3bind.errors import CheckpointError
from m3bind.models.bound import M3Bind

_CHUNK = 1 << 20


def model_fingerprint(folder: str | Path) -> str:
    """``sha256:<hex>`` over the relative paths and contents of every file under ``folder``."""
    folder = Path(folder)
    if not (folder / "m3bind.json").is_file():
        raise CheckpointError(f"{folder}: not a saved M3Bind model (no m3bind.json)")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix().encode()
        digest.update(len(relative).to_bytes(8, "little") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


@dataclass
class SearchModel:
    """A loaded bound model together with the fingerprint of the folder it was loaded from."""

    encoder: M3Bind
    fingerprint: str
    folder: Path

    @classmethod
    def load(cls, folder: str | Path, expected_fingerprint: str | None = None,
             device: str = "cpu") -> "SearchModel":
        """Load ``folder``; with ``expected_fingerprint`` refuse (before loading) a different model."""
        folder = Path(folder)
        fingerprint = model_fingerprint(folder)
        if expected_fingerprint is not None:
            check_same_model(expected_fingerprint, fingerprint, folder)
        return cls(M3Bind.from_pretrained(folder).to(device), fingerprint, folder)


def check_same_model(index_fingerprint: str, model_fingerprint_: str, model_folder: Path | str) -> None:
    if index_fingerprint != model_fingerprint_:
        raise CheckpointError(
            f"{model_folder}: this model ({_short(model_fingerprint_)}) did not make the index "
            f"(made by model {_short(index_fingerprint)}); its embeddings live in another space, so "
            "query with the index's own model or re-index with this one")


def _short(fingerprint: str) -> str:
    return fingerprint.removeprefix("sha256:")[:12]
