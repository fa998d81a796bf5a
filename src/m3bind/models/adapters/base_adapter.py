"""What every adapter shares: validated options, and saving/rebuilding in m3bind's own folder format.

An adapter is a :class:`~m3bind.models.base.ModalityModel` around a published architecture.
It is created in one of two ways:

* :meth:`AdapterModel.from_checkpoint`: from the owners' original files (a Lightning
  ``.ckpt``, a ``.pt`` state dict, an open_clip or Hugging Face folder), as a config line
  ``model: {type: mgca, path: ..., options: {...}}`` asks;
* :meth:`AdapterModel.from_pretrained`: from a folder written by :meth:`AdapterModel.save_pretrained`
  (used by ``M3Bind.from_pretrained`` after binding merged LoRA into the weights)::

      adapter.json        {"format_version", "type", "options", "preprocess"}
      model.safetensors   the adapter's full state dict
      tokenizer/ ...      tokenizer and text-model config files, when the adapter has any

The options saved in ``adapter.json`` describe the architecture completely; paths in them
are plain names of files or folders inside the saved folder (anything else is refused on
reading), so the folder rebuilds without the original files.

Relative paths in options (tokenizer or text-model folders) are resolved against a base
folder: for original checkpoints the folder that contains ``path`` (unless the caller gives
another), for saved adapters the saved folder itself.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.base import ModalityModel
from m3bind.models.descriptions import (AdapterDescription, build_preprocess, describe_preprocess, is_plain_name,
                                        read_description, write_description)
from m3bind.models.weights import load_state_strict, read_weights, save_weights

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

    @classmethod
    def options_preprocess(cls, options: AdapterOptions) -> BaseModel | None:
        """The preprocessing the options imply on their own; None where it also depends on the
        checkpoint's files (the default)."""
        return None

    @classmethod
    def checkpoint_preprocess(cls, path: Path, options: AdapterOptions) -> BaseModel:
        """The preprocessing of the checkpoint at ``path``, equal to ``from_checkpoint(path,
        options).preprocess`` but read without the weights where the adapter can (a run needs it
        to read its studies before any stage loads the model)."""
        spec = cls.options_preprocess(options)
        return spec if spec is not None else cls.from_checkpoint(path, options).preprocess

    # --- persistence ------------------------------------------------------------------
    def save_assets(self, directory: Path) -> dict[str, Any]:
        """Write tokenizer / text-config files into ``directory``.

        Returns option updates that point at them (paths relative to ``directory``).
        """
        return {}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``adapter.json``, ``model.safetensors`` and any tokenizer files into ``directory``.

        Merge (or remove) peft LoRA layers first; their weights are not part of the layout
        and :meth:`from_pretrained` rejects them as unexpected keys. Path options that
        :meth:`save_assets` did not fill are left out: they point outside the folder, and a
        saved folder must rebuild from its own files.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        unsaved_paths = {name: None for name in self.options.path_fields}
        options = self.options.model_copy(update={**unsaved_paths, **self.save_assets(directory)})
        save_weights(self, directory / WEIGHTS_FILE)
        write_description(directory / ADAPTER_FILE, AdapterDescription(
            type=self.model_type, options=options.model_dump(mode="json"),
            preprocess=describe_preprocess(self.preprocess)))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AdapterModel:
        """Rebuild a model written by :meth:`save_pretrained`, in eval mode.

        Raises :class:`CheckpointError` naming the file when ``adapter.json`` is missing or does
        not validate, was saved by another adapter, or the weights do not fit.
        """
        directory = Path(directory)
        path = directory / ADAPTER_FILE
        description = read_description(path, AdapterDescription)
        if description.type != cls.model_type:
            raise CheckpointError(f"{path}: saved model type is '{description.type}', not '{cls.model_type}'")
        model = cls.build(cls._saved_options(description.options, path).with_resolved_paths(directory))
        load_state_strict(model, read_weights(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
        model.preprocess = build_preprocess(description.preprocess, path)
        return model.eval()

    @classmethod
    def _saved_options(cls, raw: Mapping[str, Any], source: Path) -> AdapterOptions:
        """The options of a saved ``adapter.json``; their paths must name files inside the folder."""
        try:
            options = cls.options_class.model_validate(dict(raw))
        except ValidationError as error:
            raise CheckpointError(f"{source}: invalid options for model type '{cls.model_type}': {error}") from None
        for name in options.path_fields:
            value = getattr(options, name)
            if value is not None and not is_plain_name(value):
                raise CheckpointError(f"{source}: options.{name} {value!r} is not a plain file or folder name "
                                      "inside the saved folder")
        return options
