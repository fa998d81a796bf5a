"""The registry of modality models: adapters for published medical CLIP checkpoints, and ``builtin``.

``modalities.<m>.model: {type: <name>, path: <local file or folder>, options: {...}}`` picks
one of the adapters below (see ``docs/checkpoints.md`` for the exact lines and what each
adapter verifies):

============  ==============================================================================
name          checkpoint
============  ==============================================================================
open_clip     any open_clip model: folder with ``open_clip_config.json`` + weights (QuiltNet, BiomedCLIP)
hf_clip       Hugging Face ``CLIPModel`` folder (PLIP and similar)
mgca          MGCA Lightning ``.ckpt`` (ViT-B/16 or ResNet-50), chest X-ray
flair         FLAIR ``flair_resnet.pth`` or its Hugging Face folder, retina
ct_clip       CT-CLIP ``CT-CLIP_v2.pt`` (CTViT + CXR-BERT), chest CT
ecg_clip      ECG-CLIP as defined in the M3Bind authors' code, 12-lead ECG
builtin       m3bind's own small CLIP model (:mod:`m3bind.models.builtin`); only a folder it saved
============  ==============================================================================

Every registered class rebuilds a folder its ``save_pretrained`` wrote with
``from_pretrained(directory)`` (:func:`load_saved_adapter`); ``M3Bind.from_pretrained`` relies
on that for each modality. Only the adapters also read an original checkpoint
(:func:`load_adapter`).

Adapter modules are imported on first use, so importing this package does not pull in
open_clip or timm.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.base import ModalityModel

# Adapter name -> "module:class"; a fixed table, so a config can never name arbitrary code.
_ADAPTERS: dict[str, str] = {
    "open_clip": "m3bind.models.adapters.open_clip_adapter:OpenCLIPAdapter",
    "hf_clip": "m3bind.models.adapters.hf_clip:HFCLIPAdapter",
    "mgca": "m3bind.models.adapters.mgca:MGCAAdapter",
    "flair": "m3bind.models.adapters.flair:FLAIRAdapter",
    "ct_clip": "m3bind.models.adapters.ct_clip:CTCLIPAdapter",
    "ecg_clip": "m3bind.models.adapters.ecg_clip:ECGCLIPAdapter",
    "builtin": "m3bind.models.builtin:BuiltinCLIP",
}


def adapter_names() -> list[str]:
    """The model types a config's ``model.type`` and a saved ``m3bind.json`` may name."""
    return list(_ADAPTERS)


def adapter_class(name: str):
    """The adapter class registered under ``name``; :class:`ConfigError` listing the known names otherwise."""
    if name not in _ADAPTERS:
        raise ConfigError(f"unknown model type '{name}'; known types: {', '.join(_ADAPTERS)}")
    module_name, class_name = _ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_adapter(type: str, path: Path | str | None, options: Mapping[str, Any] | None = None, *,
                 base_dir: Path | str | None = None) -> ModalityModel:
    """A published model from its original local files, in eval mode.

    ``type`` is the adapter name, ``path`` the checkpoint file or folder, ``options`` the
    config's ``model.options``. Relative paths inside ``options`` (tokenizer or text-model
    folders) are resolved against ``base_dir``, by default the folder that contains ``path``.

    Raises :class:`ConfigError` for an unknown type or invalid options, and
    :class:`CheckpointError` naming the path when a file is missing or does not fit.
    """
    cls, path, parsed = _checkpoint_arguments(type, path, options, base_dir)
    return cls.from_checkpoint(path, parsed)


def checkpoint_preprocess(type: str, path: Path | str | None, options: Mapping[str, Any] | None = None, *,
                          base_dir: Path | str | None = None):
    """``load_adapter(...).preprocess``, read without loading the weights where the adapter can
    (see ``AdapterModel.checkpoint_preprocess``); same arguments and errors as :func:`load_adapter`."""
    cls, path, parsed = _checkpoint_arguments(type, path, options, base_dir)
    return cls.checkpoint_preprocess(path, parsed)


def _checkpoint_arguments(type: str, path, options, base_dir):
    """The adapter class, the checkpoint path and the parsed options, each checked."""
    from m3bind.models.adapters.base_adapter import AdapterModel

    cls = adapter_class(type)
    if not issubclass(cls, AdapterModel):
        raise ConfigError(f"model type '{type}' has no original checkpoint format; a folder it saved is "
                          "rebuilt with load_saved_adapter")
    if path is None:
        raise ConfigError(f"model type '{type}' needs model.path: the local checkpoint file or folder "
                          "(see docs/checkpoints.md)")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint for model type '{type}' not found; download it from its "
                              "owners and point model.path at it (see docs/checkpoints.md)")
    parsed = cls.parse_options(options, Path(base_dir) if base_dir is not None else path.parent)
    return cls, path, parsed


def load_saved_adapter(type: str, directory: Path | str) -> ModalityModel:
    """Rebuild a model of the registered ``type`` that its ``save_pretrained`` wrote into ``directory``, in eval mode."""
    return adapter_class(type).from_pretrained(Path(directory))


__all__ = ["adapter_class", "adapter_names", "checkpoint_preprocess", "load_adapter", "load_saved_adapter"]
