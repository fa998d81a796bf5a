"""Every loss term of M3Bind, one function per paper equation.

Embeddings are L2-normalised, as every modality model, binding head and student returns them.

    eq. 1  clip_loss / clip_objective     a modality's own image-text alignment (pretrain, bind)
    eq. 2  embedding_mse                  two text encoders on the same texts
    eq. 6  binding_loss                   sum_m w_m L_CLIP^(m) + lambda * sum_{j<k} w_j w_k L_MSE^(j,k)
    eq. 7  kd_loss                        SESKD: every teacher against the student
    eq. 8  text_to_image_infonce          SESKD: the student's texts pick their own images
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Eq. 1, the symmetric InfoNCE of CLIP: the mean of the image->text and text->image cross entropies.

    Row ``i`` of ``image_emb`` and row ``i`` of ``text_emb`` are a positive pair; every other
    row in the batch is a negative. Both are ``(N, D)``; ``logit_scale`` multiplies the
    cosine similarities (already exponentiated, e.g. ``1/0.07``).
    """
    if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
        raise ValueError(f"clip_loss needs two (N, D) tensors of the same shape, got "
                         f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.T  # (N images, N texts)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def soft_clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, targets: Tensor) -> Tensor:
    """Eq. 1 with soft targets (FLAIR's pretraining loss): ``targets[i, j] > 0`` marks pair
    (image i, text j) as matching; rows are normalised to sum to 1. With ``targets = I`` this is
    :func:`clip_loss`. Plain InfoNCE would push the equally valid reports of two studies with
    the same findings apart.
    """
    logits = logit_scale * image_emb @ text_emb.T
    targets = targets.to(logits.dtype)
    image_to_text = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(targets.T / targets.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (image_to_text + text_to_image)


def same_label_targets(labels: Sequence[Sequence[str]]) -> Tensor:
    """(N, N) 1 where two studies have the same set of findings (normal = no findings), else 0."""
    keys = [frozenset(study) for study in labels]
    return torch.tensor([[float(a == b) for b in keys] for a in keys])


def labels_vary(labels: Sequence[Sequence[str]]) -> bool:
    """Whether a training set has at least two kinds of study (sets of findings).

    Label-aware targets need that: when every study carries the same findings (a manifest
    without a ``labels`` column reads as every study normal) every pair would count as a match
    and the loss would have nothing to contrast, so such a set trains with plain CLIP.
    """
    first = frozenset(labels[0]) if len(labels) else frozenset()
    return any(frozenset(study) != first for study in labels)


def clip_objective(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float,
                   labels: Sequence[Sequence[str]] | None = None) -> Tensor:
    """Eq. 1 as pretraining and binding train it: label-aware soft targets when the studies'
    ``labels`` are given (the models were trained that way, so binding keeps the same
    objective), plain CLIP InfoNCE otherwise. ``labels`` follow the rows of the batch."""
    if labels is None:
        return clip_loss(image_emb, text_emb, logit_scale)
    return soft_clip_loss(image_emb, text_emb, logit_scale, same_label_targets(labels).to(image_emb.device))


def embedding_mse(a: Tensor, b: Tensor) -> Tensor:
    """Eq. 2, ``F.mse_loss``: the mean of squared differences over the batch AND the D dimensions.

    The paper leaves the normalisation open; the authors' code uses ``F.mse_loss`` and their
    lambda = 10 is tuned for that scale (summing over dimensions is D times larger and, with
    lambda = 10, lets the alignment term swamp the CLIP terms and collapse the text spaces).
    The same distance is SESKD's L_KD (eq. 7).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (B, D) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.mse_loss(a, b)


def text_alignment_loss(text_embeddings: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """The alignment term of eq. 6: sum over unordered pairs {j, k} of w_j w_k L_MSE^(j,k) (eq. 2).

    ``text_embeddings[m]`` is modality m's shared-space embedding of the SAME texts (each through
    its own tokenizer). Each unordered pair counts once, as in the authors' code.
    """
    names = list(text_embeddings)
    total = text_embeddings[names[0]].new_zeros(())
    for m1, m2 in combinations(names, 2):
        total = total + weights[m1] * weights[m2] * embedding_mse(text_embeddings[m1], text_embeddings[m2])
    return total


def binding_loss(clip_losses: Mapping[str, Tensor], weights: Mapping[str, float],
                 text_embeddings: Mapping[str, Tensor], lambda_text: float) -> dict[str, Tensor]:
    """Eq. 6, the binding objective: sum_m w_m L_CLIP^(m) + lambda * alignment.

    Returns the parts for logging: ``clip`` (weighted sum), ``text_mse`` (the alignment term; zero
    with one modality, where there is nothing to align) and ``loss`` (the total).
    """
    clip_total = None
    for m, loss_m in clip_losses.items():
        term = weights[m] * loss_m
        clip_total = term if clip_total is None else clip_total + term
    align = text_alignment_loss(text_embeddings, weights) if len(text_embeddings) > 1 else clip_total * 0
    return {"clip": clip_total, "text_mse": align, "loss": clip_total + lambda_text * align}


def kd_loss(teacher_embeddings: Mapping[str, Tensor], student_embeddings: Tensor,
            row_weights: Mapping[str, Tensor] | None = None) -> Tensor:
    """Eq. 7, L_KD: sum over teachers of the MSE (eq. 2's distance) to the student's embeddings.

    ``row_weights`` (teacher -> (B,) weights) weighs each text's squared error per teacher; all
    ones is eq. 7 exactly (see :func:`source_teacher_weights`).
    """
    if row_weights is None:
        return sum(embedding_mse(t, student_embeddings) for t in teacher_embeddings.values())
    return sum((row_weights[m][:, None] * (t - student_embeddings) ** 2).mean()
               for m, t in teacher_embeddings.items())


def source_teacher_weights(sources: Sequence[str], teachers: Sequence[str], other_weight: float,
                           device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Per-text teacher weights for :func:`kd_loss`: the teacher of the modality a text came from
    counts 1, every other teacher ``other_weight``, rescaled so each text's weights sum to the
    number of teachers (L_KD keeps eq. 7's scale; ``other_weight`` 1 is eq. 7). A text from no
    teacher's corpus (source not among ``teachers``) weighs every teacher alike."""
    raw = torch.tensor([[1.0 if source == m or source not in teachers else other_weight for m in teachers]
                        for source in sources], dtype=torch.float32)
    scaled = raw * len(teachers) / raw.sum(dim=1, keepdim=True)
    return {m: scaled[:, i].to(device) for i, m in enumerate(teachers)}


def text_to_image_infonce(text_emb: Tensor, image_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Eq. 8, L_Contrastive: text i must pick image i among the batch's images (mean over the batch)."""
    logits = logit_scale * text_emb @ image_emb.T
    return F.cross_entropy(logits, torch.arange(len(text_emb), device=logits.device))
