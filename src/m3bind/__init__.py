"""m3bind: bind modality-specific medical CLIP models into one embedding space through text.

    from m3bind import M3Bind, Experiment, run_bind
    model = M3Bind.from_pretrained("m3bind-demo/model")

The model, the experiment and the stage functions import torch and friends, so they load on
first use: ``import m3bind`` (and the CLI's start-up) stays light.
"""
from __future__ import annotations

import importlib

from m3bind.errors import CheckpointError, ConfigError, DataError, M3BindError, TrainingError

__version__ = "0.1.0"

_LAZY = {
    "M3Bind": "m3bind.models.bound",
    "Experiment": "m3bind.experiment",
    "load_config": "m3bind.config",
    "run_pretrain": "m3bind.stages",
    "run_bind": "m3bind.stages",
    "run_distill": "m3bind.stages",
    "run_eval": "m3bind.stages",
    "run_extend": "m3bind.stages",
    "run_ablation": "m3bind.stages",
}

__all__ = ["M3BindError", "DataError", "ConfigError", "CheckpointError", "TrainingError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'm3bind' has no attribute '{name}'")
