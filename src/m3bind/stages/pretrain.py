"""The ``pretrain`` stage: each built-in model learns its own modality from its own manifest.

Published models (adapters) skip it: they arrive pretrained.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from pydantic import ValidationError

from m3bind.config import format_validation_error
from m3bind.errors import ConfigError
from m3bind.eval.protocol import describe_zero_shot, modality_zero_shot
from m3bind.devices import on_main_process
from m3bind.experiment import Experiment, keeps_sentence_vectors
from m3bind.models.view import native_view
from m3bind.stages.artifacts import write_summary
from m3bind.train.losses import labels_vary


@keeps_sentence_vectors
def run_pretrain(exp: Experiment, modalities: Sequence[str] | None = None, *, resume: bool = False,
                 progress=None, log=print) -> dict[str, dict]:
    """Pretrain every built-in modality model: train, save, report zero-shot accuracy on validation."""
    from m3bind.models.builtin import build_builtin_model, builtin_config
    from m3bind.train.pretrain import pretrain_modality

    results = {}
    for modality in modalities or exp.modalities:
        spec = exp.cfg.modalities[modality].model
        if not exp.trains_from_scratch(modality):
            log(f"{modality}: starts from the {spec.type} model at {spec.path}, no pretraining needed")
            continue
        # A modality's own options may pick another text backbone; its defaults follow that choice.
        config = builtin_config(exp.builtin_kind(modality), demo=exp.cfg.demo_sizes,
                                text_backbone=exp.cfg.text_backbone(modality))
        config = config.model_copy(update={"modality": modality})
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
        exp.sentence_encoder.adopt([model])
        if exp.cfg.pretrain.text_mlm_steps and config.text_backbone != "scratch":
            raise ConfigError(f"modalities.{modality}: pretrain.text_mlm_steps pretrains a scratch text tower; the "
                              f"'{config.text_backbone}' text backbone is already pretrained and stays frozen")
        if exp.cfg.pretrain.text_mlm_steps:
            from m3bind.train.text_pretrain import mlm_pretrain

            corpus = [t for m in exp.modalities for t in exp.studies(m, "train").texts]
            mlm_pretrain(model, corpus, exp.cfg.pretrain.text_mlm_steps, seed=exp.cfg.seed, progress=progress)
        if exp.cfg.pretrain.label_aware and not labels_vary(train.labels):
            log(f"{modality}: every training study has the same findings, so label-aware targets would match every "
                "pair: trained with plain CLIP targets")
        outcome = pretrain_modality(model, train, exp.cfg.pretrain, exp.out_dir / "pretrain" / modality,
                                    seed=exp.cfg.seed, resume=resume, progress=progress)
        on_main_process(lambda: model.save_pretrained(exp.pretrained_dir(modality)))
        zero_shot = modality_zero_shot(exp, modality, native_view(model))
        results[modality] = {"train_studies": len(train), "final_loss": outcome.history[-1]["loss"]
                             if outcome.history else None, "zero_shot": zero_shot,
                             "skipped_studies": [str(item) for item in train.skipped],
                             "read_notes": [str(note) for note in train.read_notes]}
        log(f"{modality}: zero-shot accuracy {describe_zero_shot(zero_shot)}")
    summary = exp.out_dir / "pretrain" / "summary.json"
    previous = json.loads(summary.read_text()) if summary.exists() else {}
    on_main_process(lambda: write_summary(summary, {**previous, **results}))
    return results


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
