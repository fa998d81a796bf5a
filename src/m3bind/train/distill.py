"""Distillation, SESKD (paper eq. 7-9): distil the M bound text encoders into one student.

KD steps (``kd_steps``):                   L = L_KD = sum_m MSE(T_m, T_student)
(``other_teachers`` < 1 weighs each text's own modality's teacher above the others; 1 is eq. 7)
then contrastive steps (``contrastive_steps``): L = kd_weight * L_KD + sum_m L_Contrastive^(m)
(eq. 9 has kd_weight 1)
L_Contrastive^(m) is eq. 8: for each report in a batch of modality m's image-text pairs, the
cross-entropy of picking its own image among the batch's images, with the student's text
embedding and modality m's (frozen) image embedding; the temperature is modality m's.

Teachers and image encoders are frozen, so their embeddings are computed once and reused
(``cache_embeddings``); recomputing them every step gives the same losses, only slower (see
benchmarks/distill_cache.py). Teachers are the bound text encoders as binding left them: a
snapshot, even when ``update_heads`` lets the contrastive steps move the binding heads so that every
modality's IMAGE embeddings follow the student's text space.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from m3bind.config import DistillConfig
from m3bind.data.datasets import StudySet
from m3bind.devices import process_folder, resolve_mixed_precision
from m3bind.models.binding import BoundModality
from m3bind.models.student import StudentTextEncoder
from m3bind.train.frozen import FrozenImageEmbeddings, FrozenTextEmbeddings
from m3bind.train.loop import LoopResult, LoopSettings, run_loop
from m3bind.train.losses import kd_loss, source_teacher_weights, text_to_image_infonce
from m3bind.train.sampling import sample_batch, sample_text_sources, step_generator


def teacher_encoders(bound: Mapping[str, BoundModality]) -> dict[str, callable]:
    """Each bound text encoder as binding left it: its own frozen copy of the binding head, so
    teachers stay a snapshot even when the contrastive steps train the heads (``update_heads``) and the
    embeddings are recomputed every step (``cache_embeddings: false``)."""
    def encoder(module: BoundModality):
        head = copy.deepcopy(module.head).requires_grad_(False)
        return lambda texts: head(module.model.encode_texts(list(texts)))
    return {m: encoder(module) for m, module in bound.items()}


def distill_student(student: StudentTextEncoder, bound: Mapping[str, BoundModality],
                    train: Mapping[str, StudySet], cfg: DistillConfig, run_dir: Path, *,
                    probabilities: Mapping[str, float], seed: int = 0, resume: bool = False, progress=None,
                    stop_after: int | None = None, tensorboard: bool = True,
                    prompt_texts: Mapping[str, Sequence[str]] | None = None,
                    image_tables: Path | None = None) -> LoopResult:
    """SESKD; ``prompt_texts`` (modality -> its zero-shot prompts) join every KD batch, half a batch
    of them per step. ``image_tables``: as in :func:`m3bind.train.bind.bind_models`."""
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
    prompts = list(dict.fromkeys((m, t) for m, texts in (prompt_texts or {}).items() for t in texts))
    frozen = process_folder(run_dir / "frozen")
    teachers = FrozenTextEmbeddings(teacher_encoders(bound),
                                    [t for m in names for t in corpora[m]] + [t for _, t in prompts],
                                    cfg.cache_embeddings, directory=frozen / "teachers", device=student.device)
    images = {m: FrozenImageEmbeddings(bound[m], train[m].images, cfg.cache_embeddings,
                                       directory=frozen / m, shared=image_tables,
                                       source_key=train[m].key) for m in names}
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    total = cfg.kd_steps + cfg.contrastive_steps

    def step_fn(step: int) -> dict[str, Tensor]:
        drawn = sample_text_sources(corpora, probabilities, cfg.batch_size, step_generator(seed, step, 0))
        if prompts:
            # A stream past the contrastive ones, so the report batches stay those of a run without prompts.
            picks = sample_batch(len(prompts), max(1, cfg.batch_size // 2), step_generator(seed, step, len(names) + 1))
            drawn += [prompts[i] for i in picks.tolist()]
        texts = [t for _, t in drawn]
        contrastive_phase = step >= cfg.kd_steps
        indices = {m: sample_batch(len(train[m]), cfg.batch_size, step_generator(seed, step, stream))
                   for stream, m in enumerate(names, start=1)} if contrastive_phase else {}
        reports = {m: [train[m].texts[i] for i in index.tolist()] for m, index in indices.items()}
        # One student pass over the KD texts and every modality's reports, not six: a GPU step is
        # bound by kernel launches (docs/findings.md). Rows are split back in the same order.
        everything = student.encode_texts(texts + [t for batch in reports.values() for t in batch])
        student_emb, *report_embs = torch.split(everything, [len(texts), *map(len, reports.values())])
        weights = (None if cfg.other_teachers == 1.0 else
                   source_teacher_weights([m for m, _ in drawn], names, cfg.other_teachers, student_emb.device))
        parts = {"kd": kd_loss(teachers(texts), student_emb, weights)}
        loss = parts["kd"]
        if contrastive_phase:
            contrastive = student_emb.new_zeros(())
            for m, text_emb in zip(reports, report_embs):
                image_emb = bound[m].head(images[m][indices[m]])
                term = text_to_image_infonce(text_emb, image_emb, bound[m].logit_scale().detach())
                parts[f"contrastive/{m}"] = term
                contrastive = contrastive + term
            parts["contrastive"] = contrastive
            loss = cfg.kd_weight * parts["kd"] + contrastive
        parts["loss"] = loss
        return parts

    def state() -> dict[str, Tensor]:
        return {name: p for name, p in trainable.state_dict(keep_vars=True).items()
                if name.startswith("student.") or cfg.update_heads}

    settings = LoopSettings(total_steps=total, warmup_steps=min(20, total // 10),
                            checkpoint_every=cfg.checkpoint_every, description="distill (SESKD)",
                            mixed_precision=resolve_mixed_precision(cfg.mixed_precision, student.device))
    return run_loop(trainable, optimizer, step_fn, settings, run_dir, resume=resume, progress=progress,
                    checkpoint_state=state, stop_after=stop_after, tensorboard=tensorboard)
