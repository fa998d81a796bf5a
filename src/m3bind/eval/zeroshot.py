"""Zero-shot classification: compare image embeddings with class prototypes made from prompts.

A class prototype averages the embeddings of the class's prompts. Two published rules differ
in what they do next, and in whether the bare class name is one of the prompts:

- FLAIR: the plain mean of the prompt embeddings, not renormalised. A class with more varied
  prompts gets a shorter prototype, and so lower scores for every image.
- CLIP's prompt ensembles: the mean renormalised to unit length, so every class competes on
  equal terms.

FLAIR also appends the bare class name to the descriptions; a name the text encoder never saw
in training pulls the prototype away from the descriptions. :data:`PROTOTYPE_RULES` holds the
four combinations; the evaluation chooses one on validation (``eval.prototypes``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from m3bind.eval.bootstrap import Bootstrap, macro_auc_statistic, mean_statistic
from m3bind.eval.metrics import classification_metrics


@dataclass(frozen=True)
class PrototypeRule:
    """How class prototypes are made: renormalised or not, with the bare class name or not."""

    renormalise: bool
    class_name: bool

    @property
    def name(self) -> str:
        return ("renormalised" if self.renormalise else "mean") + ("+name" if self.class_name else "")

    @property
    def description(self) -> str:
        kind = "CLIP's renormalised prompt ensemble" if self.renormalise else "FLAIR's unnormalised prompt mean"
        return f"{kind}, {'with' if self.class_name else 'without'} the bare class name"


PROTOTYPE_RULES: dict[str, PrototypeRule] = {rule.name: rule for rule in (
    PrototypeRule(renormalise=False, class_name=True),   # FLAIR, the protocol of earlier releases
    PrototypeRule(renormalise=False, class_name=False),
    PrototypeRule(renormalise=True, class_name=True),
    PrototypeRule(renormalise=True, class_name=False),
)}


@torch.no_grad()
def class_prototypes(encode_texts: Callable[[list[str]], torch.Tensor],
                     class_prompts: Mapping[str, Sequence[str]], renormalise: bool = False) -> torch.Tensor:
    """(n_classes, dim): the mean prompt embedding of each class, in ``class_prompts`` order;
    renormalised to unit length when ``renormalise``."""
    # One encoder call for every class's prompts: per-class calls cost a tokenizer and model launch each.
    texts = [text for prompts in class_prompts.values() for text in prompts]
    embeddings = encode_texts(texts).float().cpu()
    sizes = [len(prompts) for prompts in class_prompts.values()]
    means = torch.stack([chunk.mean(0) for chunk in torch.split(embeddings, sizes)])
    return torch.nn.functional.normalize(means, dim=-1) if renormalise else means


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


@dataclass(frozen=True)
class ZeroShotScores:
    """Per-study zero-shot results: class index and score row of each evaluated study."""

    targets: np.ndarray     # (N,)
    scores: np.ndarray      # (N, C)
    classes: list[str]

    @property
    def n(self) -> int:
        return len(self.targets)

    def metrics(self) -> dict:
        return classification_metrics(self.targets, self.scores, self.classes)

    def resampled(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """{"accuracy", "auc_macro"}: (B,) values on each resample of the studies."""
        correct = (self.scores.argmax(1) == self.targets).astype(float)
        return {"accuracy": mean_statistic(correct, counts),
                "auc_macro": macro_auc_statistic(self.targets, self.scores, counts)}

    def intervals(self, bootstrap: Bootstrap) -> dict:
        """``accuracy_ci`` and ``auc_macro_ci``: bootstrap intervals over the studies."""
        values = self.resampled(bootstrap.counts(self.n))
        return {f"{name}_ci": bootstrap.interval(v) for name, v in values.items()}
