"""Zero-shot classification: compare image embeddings with class prompt embeddings.

Class prototypes are the mean of a class's prompt embeddings (FLAIR-style expert-knowledge
ensembles; a naive prompt set is just one prompt per class), not renormalised, as FLAIR does.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch


@torch.no_grad()
def class_prototypes(encode_texts: Callable[[list[str]], torch.Tensor],
                     class_prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """(n_classes, dim): the mean prompt embedding of each class, in ``class_prompts`` order."""
    return torch.stack([encode_texts(list(prompts)).float().mean(0).cpu() for prompts in class_prompts.values()])


def single_label_targets(labels: Sequence[Sequence[str]], classes: Sequence[str],
                         normal: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """Targets for single-label evaluation: studies with no finding are ``normal``, studies with
    exactly one finding that is a class are that class; multi-finding studies are left out.
    Returns (kept study indices, class index per kept study)."""
    position = {c: i for i, c in enumerate(classes)}
    keep, target = [], []
    for i, study_labels in enumerate(labels):
        names = list(study_labels) or [normal]
        if len(names) == 1 and names[0] in position:
            keep.append(i)
            target.append(position[names[0]])
    return np.asarray(keep, dtype=int), np.asarray(target, dtype=int)


@torch.no_grad()
def zero_shot_logits(image_embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    return image_embeddings.float() @ prototypes.float().T


def accuracy(logits: torch.Tensor, targets: np.ndarray) -> float:
    return float((logits.argmax(1).cpu().numpy() == targets).mean())
