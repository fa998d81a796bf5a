"""The JSON descriptions of saved folders: one reader, one writer, and their schemas.

A saved model folder holds a small JSON file that says how to rebuild it (``m3bind.json`` of a
bound model, ``student.json``, a built-in model's ``config.json``, an adapter's
``adapter.json``; training checkpoints use the same reader). Such a file is untrusted input:
:func:`read_description` turns every problem (missing file, invalid JSON, a layout that does
not validate, an unsupported format version) into a :class:`~m3bind.errors.CheckpointError`
naming the file. Names that become file or folder names (modality names, model types, option
paths) must be :data:`PlainName`\\ s, so a crafted file can never point outside its folder.

Writers go through :func:`write_description`, which replaces the file atomically. The bytes
are those m3bind has always written, so folders saved earlier keep loading.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from m3bind.errors import CheckpointError
from m3bind.fileio import atomic_write_text

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be used as one file or folder name inside a saved folder.

    Letters, digits, ``_ . -``, not starting with ``.`` or ``-``; no separators and no ``..``.
    """
    return _PLAIN_NAME.fullmatch(name) is not None and ".." not in name


def _plain_name(name: str) -> str:
    if not is_plain_name(name):
        raise ValueError(f"{name!r} is not a plain name (letters, digits, '_', '.', '-'; no path "
                         "separators or '..')")
    return name


PlainName = Annotated[str, AfterValidator(_plain_name)]


class Description(BaseModel):
    """Base of every saved-folder description. Unknown keys are an error.

    ``version_field`` names the field that holds the format version (``None`` for files that
    never had one); the version this m3bind reads is that field's default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    version_field: ClassVar[str | None] = None
    # What the folder is, for the message when the file is absent.
    folder_kind: ClassVar[str] = "a saved m3bind folder"
    # Kept per file so the bytes match what earlier m3bind versions wrote.
    trailing_newline: ClassVar[bool] = False
    # Dotted paths of fields added after the format was fixed: written only when they differ
    # from their default, so a folder of the older kind keeps its bytes (and reads the same).
    omit_if_default: ClassVar[tuple[str, ...]] = ()

    def dump(self) -> dict[str, Any]:
        """The JSON object written to the file."""
        data = self.model_dump(mode="json")
        for path in self.omit_if_default:
            *parents, leaf = path.split(".")
            owner, target = self, data
            for part in parents:
                owner, target = getattr(owner, part), target[part]
            if getattr(owner, leaf) == type(owner).model_fields[leaf].get_default(call_default_factory=True):
                target.pop(leaf, None)
        return data


DescriptionT = TypeVar("DescriptionT", bound=Description)


def read_description(path: str | Path, schema: type[DescriptionT]) -> DescriptionT:
    """Read and validate the JSON file at ``path`` against ``schema``.

    Raises :class:`CheckpointError` naming the file when it is absent, is not valid JSON, has
    a format version this m3bind does not read, or does not validate.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; {path.parent} is not {schema.folder_kind}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if schema.version_field is not None:
        supported = schema.model_fields[schema.version_field].default
        found = data.get(schema.version_field)
        if found != supported:
            raise CheckpointError(f"{path}: {schema.version_field} {found!r} is not supported "
                                  f"(this m3bind reads version {supported})")
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        raise CheckpointError(f"{path}: does not describe {schema.folder_kind}: {error}") from error


def write_description(path: str | Path, description: Description) -> Path:
    """Write ``description`` as indented JSON, replacing ``path`` atomically."""
    text = json.dumps(description.dump(), indent=2)
    return atomic_write_text(path, text + "\n" if description.trailing_newline else text)


# --- preprocessing specs --------------------------------------------------------------
class PreprocessDescription(BaseModel):
    """A preprocessing spec as saved: its class name and its settings.

    The class name is kept because a custom modality (say "mri") may use another modality's
    spec class (``CTPreprocess``), so the modality name alone cannot tell which class to rebuild.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    settings: dict[str, Any] = {}


def describe_preprocess(spec: BaseModel | None) -> PreprocessDescription | None:
    """The saved form of a preprocessing spec (``None`` stays ``None``)."""
    if spec is None:
        return None
    return PreprocessDescription(type=type(spec).__name__, settings=spec.model_dump(mode="json"))


def build_preprocess(description: PreprocessDescription | None, source: Path) -> BaseModel | None:
    """Rebuild a preprocessing spec saved by :func:`describe_preprocess`.

    Only the spec classes of :data:`m3bind.data.preprocess_specs.SPEC_TYPES` are accepted, so a
    saved file can never name an arbitrary class. ``source`` names the file in errors.
    """
    if description is None:
        return None
    # Imported here so the models package does not depend on the data package at import time.
    from m3bind.data.preprocess_specs import SPEC_TYPES

    known = {spec_class.__name__: spec_class for spec_class in SPEC_TYPES}
    if description.type not in known:
        raise CheckpointError(f"{source}: unknown preprocessing type {description.type!r}; "
                              f"known: {', '.join(known)}")
    try:
        return known[description.type].model_validate(description.settings)
    except ValidationError as error:
        raise CheckpointError(f"{source}: preprocessing settings do not validate: {error}") from error


# --- schemas of the saved folders -----------------------------------------------------
class ModalityEntry(BaseModel):
    """One modality of a bound model: which saved model type rebuilds it, and its native width."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: PlainName
    native_dim: PositiveInt


class M3BindDescription(Description):
    """``m3bind.json`` of a saved :class:`~m3bind.models.bound.M3Bind`."""

    version_field: ClassVar[str | None] = "format"
    folder_kind: ClassVar[str] = "a saved M3Bind model"

    format: int = 1
    shared_dim: PositiveInt
    # The names are folder names under modalities/.
    modalities: dict[PlainName, ModalityEntry]
    # How an image query ranks other images (m3bind.eval.protocol.RETRIEVAL_SIMILARITIES), chosen
    # on the paired validation set when the model was made; 'centred' reads centres.safetensors.
    # Folders from before it was recorded rank by cosine.
    retrieval_similarity: Literal["cosine", "centred"] = "cosine"
    retrieval_validation: dict[str, float | None] | None = None
    omit_if_default: ClassVar[tuple[str, ...]] = ("retrieval_similarity", "retrieval_validation")


class StudentDescription(Description):
    """``student.json`` of a saved student text encoder (it never had a format version)."""

    folder_kind: ClassVar[str] = "a saved student text encoder"

    pooling: Literal["cls", "mean"]
    max_length: PositiveInt
    shared_dim: PositiveInt
    # Whether the backbone was saved with its (unused) pooler; files from before it was recorded had one.
    pooler: bool = True
    # "saved": the backbone/ folder; "minilm": the frozen all-MiniLM-L6-v2 of the installed package
    # (checked by its sha256) under a trainable MLP of width mlp_hidden.
    backbone: Literal["saved", "minilm"] = "saved"
    backbone_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    mlp_hidden: PositiveInt | None = None
    omit_if_default: ClassVar[tuple[str, ...]] = ("backbone", "backbone_sha256", "mlp_hidden")


class AdapterDescription(Description):
    """``adapter.json`` of a saved adapter; ``options`` are validated by the adapter's own options class."""

    version_field: ClassVar[str | None] = "format_version"
    folder_kind: ClassVar[str] = "a saved m3bind adapter folder"
    trailing_newline: ClassVar[bool] = True

    format_version: int = 1
    type: PlainName
    options: dict[str, Any]
    preprocess: PreprocessDescription | None = None
