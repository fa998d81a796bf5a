"""What every adapter shares: validated options, and saving/rebuilding in m3bind's own folder format.

An adapter is a :class:`~m3bind.models.base.ModalityModel` around a published architecture.
It is created in one of two ways:

* :meth:`AdapterModel.from_checkpoint`: from the owners' original files (a Lightning
  ``.ckpt``, a ``.pt`` state dict, an open_clip or Hugging Face folder), as a config line
  ``model: {type: mgca, path: ..., options: {...}}`` asks;
* :meth:`AdapterModel.from_saved`: from a folder written by :meth:`AdapterModel.save_pretrained`
  (used by ``M3Bind.from_pretrained`` after binding merged LoRA into the weights)::

      adapter.json        {"format_version", "type", "options", "preprocess"}
      model.safetensors   the adapter's full state dict
      tokenizer/ ...      tokenizer and text-model config files, when the adapter has any

The options saved in ``adapter.json`` describe the architecture completely; paths in them
point into the saved folder, so the folder rebuilds without the original files.

Relative paths in options (tokenizer or text-model folders) are resolved against a base
folder: for original checkpoints the folder that contains ``path`` (unless the caller gives
another), for saved adapters the saved folder itself.
"""
from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.base import (ModalityModel, load_weights, preprocess_from_json, preprocess_to_json,
                                save_weights)

FORMAT_VERSION = 1
ADAPTER_FILE = "adapter.json"
WEIGHTS_FILE = "model.safetensors"


class AdapterOptions(BaseModel):
    """Options common to every adapter. Subclasses add their architecture settings; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # Option fields that hold local file or folder paths; resolved against a base folder.
    path_fields: ClassVar[tuple[str, ...]] = ()

    modality: str = Field(min_length=1, description="Modality name the model serves (e.g. 'xray').")

    def with_resolved_paths(self, base_dir: Path) -> AdapterOptions:
        """A copy whose relative path fields are made absolute against ``base_dir``."""
        updates = {}
        for name in self.path_fields:
            value = getattr(self, name)
            if value is not None and not Path(value).expanduser().is_absolute():
                updates[name] = str(base_dir / value)
            elif value is not None:
                updates[name] = str(Path(value).expanduser())
        return self.model_copy(update=updates)


class AdapterModel(ModalityModel):
    """Base class of the published-checkpoint adapters: options, persistence and rebuilding."""

    options_class: ClassVar[type[AdapterOptions]] = AdapterOptions

    def __init__(self, options: AdapterOptions):
        super().__init__()
        self.options = options
        self.modality = options.modality

    # --- creation -----------------------------------------------------------------------
    @classmethod
    def parse_options(cls, raw: Mapping[str, Any] | None, base_dir: Path) -> AdapterOptions:
        """Validate a config's ``options`` mapping; :class:`ConfigError` names the adapter and the fields."""
        try:
            options = cls.options_class.model_validate(dict(raw or {}))
        except ValidationError as error:
            raise ConfigError(f"invalid options for model type '{cls.model_type}': {error}") from None
        return options.with_resolved_paths(base_dir)

    @classmethod
    @abc.abstractmethod
    def build(cls, options: AdapterOptions) -> AdapterModel:
        """The architecture that ``options`` describe, with its initial (untrained) weights."""

    @classmethod
    @abc.abstractmethod
    def from_checkpoint(cls, path: Path, options: AdapterOptions) -> AdapterModel:
        """The model with the weights of the owners' original checkpoint at ``path``, in eval mode."""

    # --- persistence ------------------------------------------------------------------
    def save_assets(self, directory: Path) -> dict[str, Any]:
        """Write tokenizer / text-config files into ``directory``.

        Returns option updates that point at them (paths relative to ``directory``).
        """
        return {}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``adapter.json``, ``model.safetensors`` and any tokenizer files into ``directory``.

        Merge (or remove) peft LoRA layers first; their weights are not part of the layout
        and :meth:`from_saved` rejects them as unexpected keys.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        options = self.options.model_copy(update=self.save_assets(directory))
        save_weights(self, directory / WEIGHTS_FILE)
        description = {
            "format_version": FORMAT_VERSION,
            "type": self.model_type,
            "options": options.model_dump(mode="json"),
            "preprocess": preprocess_to_json(self.preprocess),
        }
        (directory / ADAPTER_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_saved(cls, directory: str | Path) -> AdapterModel:
        """Rebuild a model written by :meth:`save_pretrained`, in eval mode."""
        directory = Path(directory)
        description = read_adapter_description(directory)
        if description["type"] != cls.model_type:
            raise CheckpointError(f"{directory / ADAPTER_FILE}: saved model type is '{description['type']}', "
                                  f"not '{cls.model_type}'")
        options = cls.parse_options(description.get("options"), directory)
        model = cls.build(options)
        load_weights(model, directory / WEIGHTS_FILE)
        model.preprocess = preprocess_from_json(description.get("preprocess"), directory / ADAPTER_FILE)
        return model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AdapterModel:
        """Same as :meth:`from_saved` (the name the :class:`ModalityModel` interface uses)."""
        return cls.from_saved(directory)


def read_adapter_description(directory: Path) -> dict[str, Any]:
    """Parse and check ``adapter.json`` of a saved adapter folder."""
    path = directory / ADAPTER_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: no {ADAPTER_FILE}; not a saved m3bind adapter folder")
    if not (directory / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}; the saved adapter is incomplete")
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    if not isinstance(description, dict) or "type" not in description:
        raise CheckpointError(f"{path}: no 'type' entry")
    if description.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {description.get('format_version')!r} is not supported "
                              f"(this m3bind reads version {FORMAT_VERSION})")
    return description
