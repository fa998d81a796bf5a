"""Stage 2, SESKD (paper eq. 7-9): distil the M bound text encoders into one student.

Phase A (``phase_a_steps``):   L = L_KD = sum_m MSE(T_m, T_student)
Phase B (``phase_b_steps``):   L = L_KD + sum_m L_Contrastive^(m)
L_Contrastive^(m) is eq. 8: for each report in a batch of modality m's image-text pairs, the
cross-entropy of picking its own image among the batch's images, with the student's text
embedding and modality m's (frozen) image embedding; the temperature is modality m's.

Teachers and image encoders are frozen, so their embeddings are computed once and reused
(``cache_embeddings``); recomputing them every step gives the same losses, only slower (see
benchmarks/distill_cache.py). Teachers are the bound text encoders as binding left them: a
snapshot, even when ``update_heads`` lets phase B move the binding heads so that every
modality's IMAGE embeddings follow the student's text space.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3bind.config import DistillConfig
from m3bind.data.datasets import LoadedStudies
from m3bind.models.binding import BoundModality
from m3bind.models.student import StudentTextEncoder
from m3bind.train.bind import sample_texts
from m3bind.train.losses import embedding_mse
from m3bind.train.loop import LoopResult, LoopSettings, run_loop, step_generator
from m3bind.train.pretrain import sample_batch


def kd_loss(teacher_embeddings: Mapping[str, Tensor], student_embeddings: Tensor) -> Tensor:
    """Eq. 7: sum over teachers of the MSE (``F.mse_loss``) to the student's embeddings."""
    return sum(embedding_mse(t, student_embeddings) for t in teacher_embeddings.values())


def text_to_image_infonce(text_emb: Tensor, image_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Eq. 8: text i must pick image i among the batch's images (mean over the batch)."""
    logits = logit_scale * text_emb @ image_emb.T
    return F.cross_entropy(logits, torch.arange(len(text_emb), device=logits.device))


class TeacherTexts:
    """Every teacher's shared-space embedding of every corpus text, computed once (or on demand)."""

    def __init__(self, bound: Mapping[str, BoundModality], texts: Sequence[str], cache: bool, batch_size: int = 256):
        self.bound = bound
        self.cache = cache
        self.index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        self.table: dict[str, Tensor] = {}
        if cache:
            unique = list(self.index)
            with torch.no_grad():
                for m, module in bound.items():
                    self.table[m] = torch.cat([module.encode_texts(unique[i:i + batch_size])
                                               for i in range(0, len(unique), batch_size)])

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if self.cache:
            rows = torch.tensor([self.index[t] for t in texts])
            return {m: table[rows] for m, table in self.table.items()}
        with torch.no_grad():
            return {m: module.encode_texts(list(texts)) for m, module in self.bound.items()}


class NativeImages:
    """A modality's image embeddings before the binding head (frozen tower), cached or recomputed."""

    def __init__(self, module: BoundModality, images: Tensor, cache: bool, batch_size: int = 128):
        self.module = module
        self.images = images
        self.cache = None
        if cache:
            with torch.no_grad():
                self.cache = torch.cat([module.model.encode_image(images[i:i + batch_size])
                                        for i in range(0, len(images), batch_size)])

    def __getitem__(self, index: Tensor) -> Tensor:
        if self.cache is not None:
            return self.cache[index]
        with torch.no_grad():
            return self.module.model.encode_image(self.images[index])


def distill_student(student: StudentTextEncoder, bound: Mapping[str, BoundModality],
                    train: Mapping[str, LoadedStudies], cfg: DistillConfig, run_dir: Path, *,
                    probabilities: Mapping[str, float], seed: int = 0, resume: bool = False, progress=None,
                    stop_after: int | None = None, tensorboard: bool = True) -> LoopResult:
    names = list(bound)
    for module in bound.values():
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    heads = nn.ModuleDict({m: bound[m].head for m in names})
    if cfg.update_heads:
        for p in heads.parameters():
            p.requires_grad_(True)
    trainable = nn.ModuleDict({"student": student, "heads": heads})
    corpora = {m: train[m].texts for m in names}
    teachers = TeacherTexts(bound, [t for m in names for t in corpora[m]], cfg.cache_embeddings)
    images = {m: NativeImages(bound[m], train[m].images, cfg.cache_embeddings) for m in names}
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    total = cfg.phase_a_steps + cfg.phase_b_steps

    def step_fn(step: int) -> dict[str, Tensor]:
        texts = sample_texts(corpora, probabilities, cfg.batch_size, step_generator(seed, step, 0))
        student_emb = student.encode_texts(texts)
        parts = {"kd": kd_loss(teachers(texts), student_emb)}
        loss = parts["kd"]
        if step >= cfg.phase_a_steps:
            contrastive = student_emb.new_zeros(())
            for stream, m in enumerate(names, start=1):
                index = sample_batch(len(train[m]), cfg.batch_size, step_generator(seed, step, stream))
                image_emb = bound[m].head(images[m][index])
                text_emb = student.encode_texts([train[m].texts[i] for i in index.tolist()])
                term = text_to_image_infonce(text_emb, image_emb, bound[m].logit_scale().detach())
                parts[f"contrastive/{m}"] = term
                contrastive = contrastive + term
            parts["contrastive"] = contrastive
            loss = loss + contrastive
        parts["loss"] = loss
        return parts

    def state() -> dict[str, Tensor]:
        return {name: p for name, p in trainable.state_dict(keep_vars=True).items()
                if name.startswith("student.") or cfg.update_heads}

    settings = LoopSettings(total_steps=total, warmup_steps=min(20, total // 10),
                            checkpoint_every=cfg.checkpoint_every, description="distill (SESKD)")
    return run_loop(trainable, optimizer, step_fn, settings, run_dir, resume=resume, progress=progress,
                    checkpoint_state=state, stop_after=stop_after, tensorboard=tensorboard)
