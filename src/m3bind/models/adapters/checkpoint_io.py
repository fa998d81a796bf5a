"""Reading published checkpoint files safely and loading them without hiding problems.

Every adapter goes through these helpers, so all of them share the same rules:

* A file is read with safetensors, or with ``torch.load(..., weights_only=True)`` when the
  original format is a pickle (Lightning ``.ckpt``, ``.pt``, ``.pth``, ``.bin``). Plain
  unpickling runs arbitrary code from the file and is never used.
* A state dict is loaded strictly: every weight the model needs must be in the file with the
  right shape, and every key in the file must be used. The only exception is a short,
  explicit list of glob patterns per adapter for parts the original carries but never uses
  to compute its global embeddings (MGCA's local heads, CT-CLIP's decoder, ...). They are
  dropped only when the model has no such key, and logged, so they can never hide a missing
  weight.
* Every problem raises :class:`~m3bind.errors.CheckpointError` naming the file and all the
  offending keys at once.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from m3bind.errors import CheckpointError

logger = logging.getLogger(__name__)

# How many key names an error message lists before it summarises the rest.
_MAX_LISTED_KEYS = 25

# Keys that hold a state dict inside a training checkpoint, in the order they are tried:
# Lightning ("state_dict"), CT-CLIP's trainer ("model"), and a few common wrappers.
STATE_DICT_CONTAINERS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module")

# transformers < 4.31 saved BERT's position-id buffer; newer versions do not register it.
POSITION_IDS_PATTERN = "*embeddings.position_ids"


def require_path(path: str | Path, what: str) -> Path:
    """``path`` as a Path; :class:`CheckpointError` naming it and ``what`` it should be when absent."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: {what} not found")
    return path


def read_checkpoint(path: str | Path) -> Any:
    """The object stored in a checkpoint file: safetensors, or a pickle read with ``weights_only=True``.

    ``weights_only=True`` only rebuilds tensors and plain containers. A file that needs any
    other class (some Lightning checkpoints store hyper-parameters as custom objects) is
    refused with a message explaining how to extract the state dict instead.
    """
    path = require_path(path, "checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint file, found a folder")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (OSError, SafetensorError) as error:
            raise CheckpointError(f"{path}: cannot read safetensors file: {error}") from error
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: the file stores Python objects other than tensors, which m3bind does not "
            f"unpickle (torch.load weights_only=True refused: {error}). If you trust the file, "
            "extract the weights once with the original code, e.g. "
            "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pt'), "
            "or convert it to safetensors") from error
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {error})") from error


def extract_state_dict(checkpoint: Any, source: str | Path,
                       containers: Iterable[str] = STATE_DICT_CONTAINERS) -> dict[str, Tensor]:
    """The tensor state dict inside a loaded checkpoint.

    A flat ``{name: tensor}`` mapping is returned as is; otherwise the first of
    ``containers`` present (``state_dict`` for Lightning) is used. A leading ``module.``
    on every key (a model saved from ``nn.DataParallel``) is removed.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a state dict (a mapping of names to tensors), "
                              f"found {type(checkpoint).__name__}")
    state: Any = checkpoint
    if not _is_tensor_mapping(state):
        for key in containers:
            if isinstance(checkpoint.get(key), Mapping):
                state = checkpoint[key]
                break
        else:
            raise CheckpointError(f"{source}: no state dict found; top-level keys are "
                                  f"{_listing(map(str, checkpoint))}; expected tensors or one of "
                                  f"{', '.join(containers)}")
    non_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise CheckpointError(f"{source}: state dict entries are not tensors: {_listing(non_tensors)}")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def select_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], source: str | Path,
                      ignore: Iterable[str] = ()) -> list[str]:
    """Load ``state`` into ``module``; every needed key present, every given key used.

    ``ignore`` holds glob patterns (``fnmatch``) of keys the original stores but never uses
    for its global embeddings; such keys are dropped only when ``module`` has no key of that
    name. Returns the dropped keys. Raises :class:`CheckpointError` naming ``source`` and
    every missing key, unexpected key and shape mismatch.
    """
    patterns = tuple(ignore)
    expected = module.state_dict()
    dropped = sorted(key for key in state
                     if key not in expected and any(fnmatchcase(key, pattern) for pattern in patterns))
    kept = {key: value for key, value in state.items() if key not in dropped}
    problems = state_dict_problems(expected, kept)
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not fit the {type(module).__name__} "
                              f"architecture: " + "; ".join(problems))
    module.load_state_dict(kept, strict=True)
    if dropped:
        logger.info("%s: ignored %d keys the original model does not use for embeddings: %s",
                    source, len(dropped), _listing(dropped))
    return dropped


def state_dict_problems(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """Human-readable descriptions of missing keys, unexpected keys and shape mismatches."""
    problems = []
    missing = sorted(expected.keys() - given.keys())
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    unexpected = sorted(given.keys() - expected.keys())
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    mismatched = [f"{key} (file {tuple(given[key].shape)}, model {tuple(expected[key].shape)})"
                  for key in sorted(expected.keys() & given.keys())
                  if given[key].shape != expected[key].shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if missing and unexpected and not (expected.keys() & given.keys()):
        # Nothing matches at all: most likely a different model or a different key prefix.
        problems.append(f"no key matches; the file's keys start with {_listing(_prefixes(given))}, "
                        f"the model's with {_listing(_prefixes(expected))}")
    return problems


def _is_tensor_mapping(value: Mapping) -> bool:
    return bool(value) and all(isinstance(v, Tensor) for v in value.values())


def _prefixes(keys: Iterable[str]) -> list[str]:
    return sorted({key.split(".", 1)[0] + "." for key in keys})


def _listing(items: Iterable[str]) -> str:
    """At most ``_MAX_LISTED_KEYS`` items joined by commas, then how many were left out."""
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    if len(items) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(items) - _MAX_LISTED_KEYS} more)"
    return shown
