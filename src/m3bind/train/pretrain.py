"""Pretraining: train one modality's CLIP model on its own image-text pairs.

This stands in for the published models (MGCA, CT-CLIP, FLAIR, ECG-CLIP, QuiltNet): each
built-in model learns its modality from its own manifest only, with its own tokenizer and text
tower, so the text spaces of different modalities start out unrelated, as in the paper.
"""
from __future__ import annotations

from pathlib import Path

import torch

from m3bind.config import PretrainConfig
from m3bind.data.datasets import StudySet
from m3bind.models.base import ModalityModel
from m3bind.train.augment import augment_batch
from m3bind.train.losses import clip_objective, labels_vary
from m3bind.train.loop import LoopResult, LoopSettings, run_loop
from m3bind.train.sampling import sample_batch, step_generator


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as CLIP trains: decay on weight matrices and kernels only, none on biases,
    normalisation gains and the logit scale (decaying the temperature pulls it toward 1)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim < 2 or "logit_scale" in name or name.endswith(".bias")
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain_modality(model: ModalityModel, train: StudySet, cfg: PretrainConfig, run_dir: Path, *,
                      seed: int = 0, resume: bool = False, progress=None, stop_after: int | None = None,
                      tensorboard: bool = True) -> LoopResult:
    """CLIP loss on ``train`` for ``cfg.steps`` AdamW steps (warm-up + cosine).

    ``cfg.label_aware``: studies with the same findings count as matches (FLAIR's soft-target
    loss); otherwise, or when every study has the same findings (:func:`labels_vary`), plain
    symmetric InfoNCE as in CLIP, MGCA and CT-CLIP."""
    label_aware = cfg.label_aware and labels_vary(train.labels)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        generator = step_generator(seed, step)
        index = sample_batch(len(train), cfg.batch_size, generator)
        images = train.images[index]
        if cfg.augment:
            images = augment_batch(images, generator)
        images = images.to(model.device)
        image_emb = model.encode_image(images)
        text_emb = model.encode_texts([train.texts[i] for i in index.tolist()])
        labels = [train.labels[i] for i in index.tolist()] if label_aware else None
        return {"loss": clip_objective(image_emb, text_emb, model.logit_scale(), labels)}

    settings = LoopSettings(total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                            checkpoint_every=cfg.checkpoint_every, description=f"pretrain {model.modality}")
    # Pretraining trains every tensor, so checkpoints hold the full state (buffers included).
    return run_loop(model, optimizer, step_fn, settings, run_dir, resume=resume, progress=progress,
                    checkpoint_state=lambda: dict(model.state_dict()), stop_after=stop_after,
                    tensorboard=tensorboard)
