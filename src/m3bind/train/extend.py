"""Beyond the paper: bind a NEW modality to an existing bound model.

The existing model (its image encoders, heads and student) is frozen; the student's text space
IS the shared space. The new modality's model gets LoRA + a binding head and learns
    L = L_CLIP(own images, own texts)                      keep its image-text alignment
      + lambda * MSE(T_new(texts), T_student(texts))       its text encoder joins the student's space
      + L_Contrastive(student texts -> its images)         (eq. 8) its images join it too
Nothing else changes, so every other modality's embeddings stay bit-identical.
"""
from __future__ import annotations

from pathlib import Path

import torch

from m3bind.config import BindConfig
from m3bind.data.datasets import StudySet
from m3bind.devices import resolve_mixed_precision
from m3bind.models.binding import BoundModality
from m3bind.models.student import StudentTextEncoder
from m3bind.train.frozen import FrozenImageEmbeddings, FrozenTextEmbeddings
from m3bind.train.losses import clip_objective, embedding_mse, labels_vary, text_to_image_infonce
from m3bind.train.loop import LoopResult, LoopSettings, run_loop
from m3bind.train.sampling import sample_batch, step_generator


def extend_with(new: BoundModality, student: StudentTextEncoder, train: StudySet, cfg: BindConfig,
                run_dir: Path, *, seed: int = 0, resume: bool = False, progress=None,
                tensorboard: bool = True) -> LoopResult:
    """Train ``new`` (already LoRA-prepared) into the frozen ``student``'s space."""
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    device = new.model.device
    targets = FrozenTextEmbeddings({"student": student.encode_texts}, train.texts,
                                   directory=run_dir / "frozen" / "student", device=device)
    images = (FrozenImageEmbeddings(new, train.images, directory=run_dir / "frozen" / new.modality)
              if not cfg.lora.image else None)
    optimizer = torch.optim.AdamW([p for p in new.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)

    label_aware = cfg.label_aware and labels_vary(train.labels)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        index = sample_batch(len(train), cfg.image_batch_size, step_generator(seed, step, 1))
        texts = [train.texts[i] for i in index.tolist()]
        image_emb = (new.head(images[index]) if images is not None
                     else new.encode_image(train.images[index].to(device)))
        text_emb = new.encode_texts(texts)
        student_emb = targets(texts)["student"]
        labels = [train.labels[i] for i in index.tolist()] if label_aware else None
        parts = {"clip": clip_objective(image_emb, text_emb, new.logit_scale(), labels),
                 "text_mse": embedding_mse(text_emb, student_emb),
                 "contrastive": text_to_image_infonce(student_emb, image_emb, new.logit_scale().detach())}
        parts["loss"] = parts["clip"] + cfg.lambda_text * parts["text_mse"] + parts["contrastive"]
        return parts

    settings = LoopSettings(total_steps=cfg.steps, warmup_steps=cfg.warmup_steps,
                            checkpoint_every=cfg.checkpoint_every, description=f"extend {new.modality}",
                            mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device))
    return run_loop(new, optimizer, step_fn, settings, run_dir, resume=resume, progress=progress,
                    tensorboard=tensorboard)
