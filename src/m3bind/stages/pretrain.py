"""The ``pretrain`` stage: each built-in model learns its own modality from its own manifest.

Published models (adapters) skip it: they arrive pretrained.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from m3bind.config import ExperimentConfig, format_validation_error
from m3bind.errors import ConfigError
from m3bind.eval.protocol import describe_zero_shot, modality_zero_shot
from m3bind.devices import on_main_process
from m3bind.experiment import Experiment
from m3bind.models.view import native_view
from m3bind.stages.artifacts import write_summary


def run_pretrain(exp: Experiment, modalities: Sequence[str] | None = None, *, resume: bool = False,
                 progress=None, log=print) -> dict[str, dict]:
    """Pretrain every built-in modality model: train, save, report zero-shot accuracy on validation.

    The modalities are independent jobs: with ``pretrain.processes`` above 1 (``auto``: one per
    core on a CPU, see :func:`~m3bind.stages.lanes.lane_count`) they run side by side in
    separate processes, each with its share of the cores."""
    from m3bind.stages.lanes import lane_count, run_in_lanes

    chosen = []
    for modality in modalities or exp.modalities:
        if exp.trains_from_scratch(modality):
            chosen.append(modality)
        else:
            spec = exp.cfg.modalities[modality].model
            log(f"{modality}: starts from the {spec.type} model at {spec.path}, no pretraining needed")
    lanes = lane_count(exp.cfg.pretrain.processes, len(chosen), exp.device, exp.cfg.pretrain.steps)
    if lanes > 1:
        # Largest studies first: the longest job starts at once, the short ones fill the other lanes.
        order = sorted(chosen, key=lambda m: -math.prod(exp.preprocess(m).output_shape()))
        jobs = [_LaneJob(exp.cfg, exp.config_path, exp.cache_dir, m, resume) for m in order]
        log(f"pretraining {len(chosen)} modalities in {lanes} processes")
        done = dict(zip(order, run_in_lanes(_pretrain_in_lane, jobs, lanes, progress=progress, log=log)))
        results = {m: done[m] for m in chosen}
    else:
        results = {m: pretrain_one(exp, m, resume=resume, progress=progress, log=log) for m in chosen}
    summary = exp.out_dir / "pretrain" / "summary.json"
    previous = json.loads(summary.read_text()) if summary.exists() else {}
    on_main_process(lambda: write_summary(summary, {**previous, **results}))
    return results


def pretrain_one(exp: Experiment, modality: str, *, resume: bool = False, progress=None, log=print) -> dict:
    """Pretrain the built-in model of one modality, save it, measure its validation zero-shot."""
    from m3bind.models.builtin import build_builtin_model, builtin_config
    from m3bind.train.pretrain import pretrain_modality

    spec = exp.cfg.modalities[modality].model
    config = builtin_config(exp.builtin_kind(modality), demo=exp.cfg.demo_sizes).model_copy(
        update={"modality": modality})
    if spec.options:
        try:
            config = type(config).model_validate({**config.model_dump(), **spec.options})
        except ValidationError as error:
            raise ConfigError(format_validation_error(
                error, type(config), f"{exp.config_path or '<config>'}: modalities.{modality}.model.options")) from None
    preprocess = exp.preprocess(modality)
    config = _channels_from_preprocess(exp, modality, config, preprocess)
    torch.manual_seed(exp.cfg.seed)
    train = exp.studies(modality, "train")
    model = build_builtin_model(modality, train.texts, config, seed=exp.cfg.seed,
                                preprocess=preprocess).to(exp.device)
    if exp.cfg.pretrain.text_mlm_steps:
        from m3bind.train.text_pretrain import mlm_pretrain

        corpus = [t for m in exp.modalities for t in exp.studies(m, "train").texts]
        mlm_pretrain(model, corpus, exp.cfg.pretrain.text_mlm_steps, seed=exp.cfg.seed, progress=progress)
    outcome = pretrain_modality(model, train, exp.cfg.pretrain, exp.out_dir / "pretrain" / modality,
                                seed=exp.cfg.seed, resume=resume, progress=progress)
    on_main_process(lambda: model.save_pretrained(exp.pretrained_dir(modality)))
    zero_shot = modality_zero_shot(exp, modality, native_view(model))
    log(f"{modality}: zero-shot accuracy {describe_zero_shot(zero_shot)}")
    return {"train_studies": len(train), "final_loss": outcome.history[-1]["loss"] if outcome.history else None,
            "zero_shot": zero_shot, "skipped_studies": [str(item) for item in train.skipped]}


@dataclass(frozen=True)
class _LaneJob:
    """What a pretraining process needs to rebuild the experiment and train one modality."""

    cfg: ExperimentConfig
    config_path: Path | None
    cache_dir: Path
    modality: str
    resume: bool


def _pretrain_in_lane(job: _LaneJob, *, progress, log) -> dict:
    from m3bind.output import quiet_libraries

    quiet_libraries()
    exp = Experiment(job.cfg, job.config_path, cache_dir=job.cache_dir)
    return pretrain_one(exp, job.modality, resume=job.resume, progress=progress, log=log)


def _channels_from_preprocess(exp: Experiment, modality: str, config, preprocess):
    """``config`` with the input channels (image channels, ECG leads) the preprocessing produces:
    the published X-ray preprocessing repeats grayscale into 3 channels, the demo's keeps 1, and a
    user's ``preprocess`` section may choose either. Options that ask for other channels are an error."""
    channels = int(preprocess.output_shape()[0])
    asked = exp.cfg.modalities[modality].model.options.get("in_channels")
    if asked is not None and asked != channels:
        raise ConfigError(f"{exp.config_path or '<config>'}: modalities.{modality}.model.options.in_channels is "
                          f"{asked}, but the preprocessing gives {channels} (its output shape is "
                          f"{tuple(preprocess.output_shape())}); drop in_channels or change the preprocessing")
    return config.model_copy(update={"in_channels": channels})
