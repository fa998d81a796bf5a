"""Reading published checkpoint files safely, in their original formats.

Every adapter goes through these helpers, so all of them share the same rules:

* A file is read with safetensors, or with ``torch.load(..., weights_only=True)`` when the
  original format is a pickle (Lightning ``.ckpt``, ``.pt``, ``.pth``, ``.bin``). Plain
  unpickling runs arbitrary code from the file and is never used.
* The state dict inside is then loaded strictly with
  :func:`m3bind.models.weights.load_state_strict`, which names the file and every offending
  key at once; the only keys it may drop are an adapter's short list of glob patterns for
  parts the original carries but never uses to compute its global embeddings (MGCA's local
  heads, CT-CLIP's decoder, ...).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from m3bind.errors import CheckpointError
from m3bind.models.weights import read_weights, summarize_keys

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
        return read_weights(path)
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
                                  f"{summarize_keys(map(str, checkpoint))}; expected tensors or one of "
                                  f"{', '.join(containers)}")
    non_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise CheckpointError(f"{source}: state dict entries are not tensors: {summarize_keys(non_tensors)}")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def select_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _is_tensor_mapping(value: Mapping) -> bool:
    return bool(value) and all(isinstance(v, Tensor) for v in value.values())
