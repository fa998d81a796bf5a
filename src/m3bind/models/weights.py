"""The one place that reads and writes safetensors weight files and checks state dicts against models.

Every weight load in m3bind (built-in models, saved adapters, binding heads, the student head,
training checkpoints, published checkpoints) goes through :func:`check_state`, so a weight that
is missing, left over or of the wrong shape is always reported the same way: a
:class:`~m3bind.errors.CheckpointError` naming the file and every offending key at once, so
one run shows the whole problem. Nothing here unpickles.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from m3bind.errors import CheckpointError

logger = logging.getLogger(__name__)

# How many key names an error message lists before it summarises the rest.
_MAX_LISTED_KEYS = 25
# How safetensors' writer ends the message of a failed write, e.g. "... No space left on device (os error 28)".
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the CPU.

    Raises :class:`CheckpointError` naming the file when it is absent, unreadable or truncated.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as error:
        raise CheckpointError(f"{path}: cannot read safetensors file: {error}") from error


def save_weights(module_or_tensors: nn.Module | Mapping[str, Tensor], path: str | Path) -> Path:
    """Write a module's state dict, or a ``{name: tensor}`` mapping, to a safetensors file.

    Every tensor is copied first: safetensors refuses tensors that share memory (tied
    weights, views), and separate copies load back into tied parameters just as well.
    """
    tensors = (module_or_tensors.state_dict() if isinstance(module_or_tensors, nn.Module)
               else module_or_tensors)
    copies = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    try:
        save_file(copies, str(path), metadata={"format": "pt"})
    except SafetensorError as error:  # a failed write (a full disk) arrives without the file's name
        code = _OS_ERROR_CODE.search(str(error))
        if code is None:
            raise CheckpointError(f"{path}: cannot write safetensors file: {error}") from error
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from error
    return Path(path)


def state_dict_problems(expected: Mapping[str, Tensor], given: Mapping[str, Tensor]) -> list[str]:
    """Human-readable descriptions of missing keys, unexpected keys and shape mismatches."""
    problems = []
    missing = sorted(expected.keys() - given.keys())
    if missing:
        problems.append(f"{len(missing)} missing keys: {summarize_keys(missing)}")
    unexpected = sorted(given.keys() - expected.keys())
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {summarize_keys(unexpected)}")
    mismatched = [f"{key} (file {tuple(given[key].shape)}, model {tuple(expected[key].shape)})"
                  for key in sorted(expected.keys() & given.keys())
                  if given[key].shape != expected[key].shape]
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {summarize_keys(mismatched)}")
    if missing and unexpected and not (expected.keys() & given.keys()):
        # Nothing matches at all: most likely a different model or a different key prefix.
        problems.append(f"no key matches; the file's keys start with {summarize_keys(_prefixes(given))}, "
                        f"the model's with {summarize_keys(_prefixes(expected))}")
    return problems


def check_state(expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str | Path,
                target: str = "the model") -> None:
    """Refuse ``given`` unless it has exactly the keys of ``expected``, each with the same shape.

    Raises :class:`CheckpointError` naming ``source`` and every missing key, unexpected key and
    shape mismatch; ``target`` says what the weights were meant for.
    """
    problems = state_dict_problems(expected, given)
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {target}: " + "; ".join(problems))


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], source: str | Path,
                      ignore: Iterable[str] = ()) -> list[str]:
    """Load ``state`` into ``module``; every needed key present, every given key used.

    ``ignore`` holds glob patterns (``fnmatch``) of keys a published checkpoint stores but never
    uses for its global embeddings; such keys are dropped only when ``module`` has no key of
    that name, so they can never hide a missing weight. Returns the dropped keys. Raises
    :class:`CheckpointError` as :func:`check_state` does.
    """
    patterns = tuple(ignore)
    expected = module.state_dict()
    dropped = sorted(key for key in state
                     if key not in expected and any(fnmatchcase(key, pattern) for pattern in patterns))
    kept = {key: value for key, value in state.items() if key not in dropped}
    check_state(expected, kept, source, target=f"the {type(module).__name__} architecture")
    module.load_state_dict(kept, strict=True)
    if dropped:
        logger.info("%s: ignored %d keys the original model does not use for embeddings: %s",
                    source, len(dropped), summarize_keys(dropped))
    return dropped


def _prefixes(keys: Iterable[str]) -> list[str]:
    return sorted({key.split(".", 1)[0] + "." for key in keys})


def summarize_keys(items: Iterable[str]) -> str:
    """At most ``_MAX_LISTED_KEYS`` items joined by commas, then how many were left out."""
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED_KEYS])
    if len(items) > _MAX_LISTED_KEYS:
        shown += f", ... ({len(items) - _MAX_LISTED_KEYS} more)"
    return shown
