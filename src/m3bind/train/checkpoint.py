"""Checkpoints that resume exactly: safetensors for tensors, JSON for everything else.

A checkpoint folder ``step_000100/`` holds
- ``model.safetensors``: the model tensors the run trains (all of them in phase one; only the
  LoRA adapters and binding heads in binding),
- ``optimizer.safetensors`` + ``optimizer.json``: AdamW moments and param-group settings,
- ``state.json``: step, scheduler state, RNG states and run metadata.
It is written to a temporary folder and renamed into place, so a run killed mid-write never
leaves a half checkpoint; ``latest`` (a one-line text file, also replaced atomically) names
the newest complete one. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from m3bind.errors import CheckpointError


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    return {"torch": torch.get_rng_state().tolist(), "numpy": _numpy_state_to_json(np.random.get_state()),
            "python": _python_state_to_json(random.getstate())}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    np.random.set_state(_numpy_state_from_json(state["numpy"]))
    random.setstate(_python_state_from_json(state["python"]))


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
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:07d}"
        tmp = self.directory / f".tmp_step_{step:07d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}, tmp / "model.safetensors")
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        state = {"step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "rng": capture_rng(), "meta": meta or {}}
        (tmp / "state.json").write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(self.directory / "latest", final.name + "\n")
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for old in done[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest(self) -> Path | None:
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        return path if path.exists() else None

    def load(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
             strict_keys: set[str] | None = None) -> dict:
        """Restore model tensors, optimizer, scheduler and RNG; returns the saved state dict."""
        try:
            tensors = load_file(path / "model.safetensors")
            state = json.loads((path / "state.json").read_text())
            opt_tensors = load_file(path / "optimizer.safetensors")
            opt_meta = json.loads((path / "optimizer.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable checkpoint ({exc})") from exc
        if strict_keys is not None and set(tensors) != strict_keys:
            missing = sorted(strict_keys - set(tensors))
            unexpected = sorted(set(tensors) - strict_keys)
            raise CheckpointError(f"{path}: checkpoint does not fit this run; missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected:
            raise CheckpointError(f"{path}: unexpected keys {unexpected[:5]}")
        optimizer_from_tensors(optimizer, opt_tensors, opt_meta)
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        return state
