"""Checkpoints that resume exactly: safetensors for tensors, JSON for everything else.

A checkpoint folder ``step_000100/`` holds
- ``model.safetensors``: the model tensors the run trains (all of them in pretraining; only the
  LoRA adapters and binding heads in binding),
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW moments and param-group settings,
- ``state.json``: step, scheduler state, RNG states and run metadata.
It is written to a temporary folder, flushed to disk and renamed into place, so a run killed
mid-write (or a machine that loses power) never leaves a half checkpoint; ``latest`` (a one-line
text file, also replaced atomically) names the newest complete one. A write that fails (a full
disk) removes the temporary folder and stops the run with a :class:`CheckpointError`; the
previous checkpoint and ``latest`` stay as they were. Nothing is ever unpickled.

Resuming is strict: the model tensors must be exactly the ones the run saves (same names, same
shapes), so a checkpoint that lacks a tensor can never leave fresh weights in a resumed run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt

from m3bind.errors import CheckpointError
from m3bind.fileio import atomic_write_text
from m3bind.models.descriptions import Description, is_plain_name, read_description
from m3bind.models.weights import check_state, read_weights, save_weights

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_SETTINGS_FILE = "optimizer.json"
STATE_FILE = "state.json"


class RngStates(BaseModel):
    """The torch, numpy and Python RNG states as :func:`capture_rng` writes them (and every
    CUDA device's when the run had CUDA: dropout on a GPU draws from those)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    torch: list[int]
    numpy: list[Any]
    python: list[Any]
    cuda: list[list[int]] | None = None


class CheckpointState(Description):
    """``state.json``: the step, the scheduler's state, the RNG states and run metadata."""

    folder_kind: ClassVar[str] = "a training checkpoint"

    step: NonNegativeInt
    scheduler: dict[str, Any] | None
    rng: RngStates
    meta: dict[str, Any]


class OptimizerSettings(Description):
    """``optimizer.json``: the optimizer's param groups and its non-tensor per-parameter state."""

    folder_kind: ClassVar[str] = "a training checkpoint"

    param_groups: list[dict[str, Any]]
    scalars: dict[str, Any]


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into flat tensors and JSON-able settings."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def capture_rng() -> dict:
    cuda = [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None
    return {"torch": torch.get_rng_state().tolist(), "numpy": _numpy_state_to_json(np.random.get_state()),
            "python": _python_state_to_json(random.getstate()), "cuda": cuda}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    np.random.set_state(_numpy_state_from_json(state["numpy"]))
    random.setstate(_python_state_from_json(state["python"]))
    cuda = state.get("cuda")
    # A run resumed on other devices than it was saved on cannot replay its GPU draws anyway.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])


def _sync_folder(folder: Path) -> None:
    """Flush ``folder``'s files and its entry list to disk, so a rename after this never exposes
    files that a power loss would leave empty."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _numpy_state_to_json(state):
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_json(state):
    name, keys, pos, has_gauss, cached = state
    return (name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached)


def _python_state_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_json(state):
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class CheckpointManager:
    """Writes and finds checkpoints in one run folder; keeps the newest ``keep`` of them."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def save(self, step: int, model_tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler, meta: dict | None = None) -> Path:
        """Write checkpoint ``step`` and point ``latest`` at it.

        Raises :class:`CheckpointError` naming the folder and the OS's reason (e.g. "No space
        left on device") when any write fails; the previous checkpoint stays the latest.
        """
        final = self.directory / f"step_{step:07d}"
        tmp = self.directory / f".tmp_step_{step:07d}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            save_weights(model_tensors, tmp / MODEL_FILE)
            opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
            save_weights(opt_tensors, tmp / OPTIMIZER_FILE)
            atomic_write_text(tmp / OPTIMIZER_SETTINGS_FILE, json.dumps(opt_meta))
            state = {"step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "rng": capture_rng(), "meta": meta or {}}
            atomic_write_text(tmp / STATE_FILE, json.dumps(state))
            _sync_folder(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _sync_folder(self.directory)
            atomic_write_text(self.directory / "latest", final.name + "\n")
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(self._failed_write_message(final, error)) from error
        self._prune()
        return final

    def _failed_write_message(self, folder: Path, error: OSError) -> str:
        reason = error.strerror or str(error)
        where = f" (writing {error.filename})" if getattr(error, "filename", None) else ""
        try:
            previous = self.latest()
        except CheckpointError:
            previous = None
        kept = (f"the last complete checkpoint, {previous.name}, is unchanged: make room, then continue with --resume"
                if previous is not None else "no earlier checkpoint exists")
        return f"{folder}: could not write the checkpoint: {reason}{where}; {kept}"

    def _prune(self) -> None:
        done = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint that ``latest`` names, or ``None`` when there is none yet."""
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{pointer}: cannot read the name of the latest checkpoint ({error})") from error
        if not is_plain_name(name):
            raise CheckpointError(f"{pointer}: {name!r} is not the name of a checkpoint folder in {self.directory}")
        path = self.directory / name
        if not path.is_dir():
            # Starting over silently would throw away the run the user asked to resume.
            raise CheckpointError(f"{pointer}: names {name}, which is not in {self.directory}; "
                                  f"delete {pointer} to start this stage over")
        return path

    def load(self, path: Path, model_tensors: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler) -> dict:
        """Restore model tensors, optimizer, scheduler and RNG; returns the saved state as a dict.

        ``model_tensors`` are the run's live tensors under the names it saves them (what the
        run's ``checkpoint_state()`` returns); the saved values are copied into them. The
        checkpoint must hold exactly those names with the same shapes: :class:`CheckpointError`
        names the file and every missing, unexpected and misshaped tensor otherwise, and any
        unreadable or truncated file.
        """
        tensors = read_weights(path / MODEL_FILE)
        check_state(model_tensors, tensors, path / MODEL_FILE, target="the tensors this run trains")
        opt_tensors = read_weights(path / OPTIMIZER_FILE)
        opt_settings = read_description(path / OPTIMIZER_SETTINGS_FILE, OptimizerSettings)
        state = read_description(path / STATE_FILE, CheckpointState)
        with torch.no_grad():
            for name, target in model_tensors.items():
                target.copy_(tensors[name])
        try:
            optimizer_from_tensors(optimizer, opt_tensors, opt_settings.model_dump())
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path / OPTIMIZER_SETTINGS_FILE}: does not fit this run's optimizer "
                                  f"({type(error).__name__}: {error})") from error
        try:
            if scheduler is not None and state.scheduler is not None:
                scheduler.load_state_dict(state.scheduler)
            restore_rng(state.rng.model_dump())
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{path / STATE_FILE}: cannot restore the scheduler and random states "
                                  f"({type(error).__name__}: {error})") from error
        return state.model_dump()
