"""The lambda = 0 control (``eval.lambda0_control``): binding with the same LoRA, heads, steps,
data and seed as ``bind`` but the CLIP terms only (``bind.lambda_text: 0``).

Binding also trains the text LoRA and the heads with each modality's CLIP loss, so a zero-shot
gain after binding could come from that extra training rather than from the text alignment.
The control separates the two; the ``evaluate`` stage reports it as the ``control`` variant.
It is bound once, into ``<output_dir>/control``, and bound again only when its settings change
or the main binding is newer than it (a rerun of pretrain or bind).
"""
from __future__ import annotations

import json

from m3bind.devices import on_main_process
from m3bind.experiment import Experiment
from m3bind.fileio import atomic_write_text
from m3bind.stages.ablate import child_experiment
from m3bind.stages.artifacts import bind_dir
from m3bind.stages.bind import run_bind

SETTINGS_FILE = "control.json"


def control_experiment(exp: Experiment) -> Experiment:
    """The control run of ``exp``: its pretrained models, lambda_text 0, in <output_dir>/control."""
    return child_experiment(exp, exp.out_dir / "control", {"lambda_text": 0.0})


def _settings(child: Experiment) -> str:
    return json.dumps({"seed": child.cfg.seed, "shared_dim": child.cfg.shared_dim,
                       "bind": child.cfg.bind.model_dump(mode="json")}, sort_keys=True)


def control_is_current(exp: Experiment) -> bool:
    """Whether the control on disk was bound with the current settings after the main binding."""
    child = control_experiment(exp)
    weights = bind_dir(child) / "model" / "adapters.safetensors"
    main = bind_dir(exp) / "model" / "adapters.safetensors"
    settings = child.out_dir / SETTINGS_FILE
    return (weights.exists() and main.exists() and settings.exists() and settings.read_text() == _settings(child)
            and weights.stat().st_mtime_ns >= main.stat().st_mtime_ns)


def run_control(exp: Experiment, *, progress=None, log=print) -> Experiment:
    """Bind the control unless a current one exists; returns its experiment (load it with
    :func:`m3bind.stages.artifacts.load_bound`)."""
    child = control_experiment(exp)
    if control_is_current(exp):
        log(f"lambda = 0 control: reusing {bind_dir(child) / 'model'}")
        return child
    log("lambda = 0 control: binding with the CLIP terms only (same LoRA, heads and steps)")
    run_bind(child, progress=progress, log=log)
    on_main_process(lambda: atomic_write_text(child.out_dir / SETTINGS_FILE, _settings(child)))
    return child
