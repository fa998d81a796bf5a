"""Losses of M3Bind: the CLIP contrastive loss and the text-alignment distances.

Embeddings are assumed L2-normalised, as every :class:`~m3bind.models.base.ModalityModel`
and binding head returns them.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE of CLIP: the mean of the image->text and text->image cross entropies.

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
    """CLIP loss with soft targets (FLAIR's pretraining loss): ``targets[i, j] > 0`` marks pair
    (image i, text j) as matching; rows are normalised to sum to 1. With ``targets = I`` this is
    :func:`clip_loss`. Used when a batch holds several studies with the same findings: plain
    InfoNCE would push their equally valid reports apart.
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


def mean_squared_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch of ``||a_i - b_i||^2`` (summed over dimensions): the paper's eq. 2.

    Note: ``torch.nn.functional.mse_loss`` (used in the authors' code) also averages over
    the D dimensions, so it equals this value divided by D.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (B, D) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (a - b).pow(2).sum(dim=1).mean()


def pairwise_mse(embeddings: Sequence[Tensor]) -> Tensor:
    """Eq. 2 for every pair of M embedding sets of the same texts: an ``(M, M)`` matrix.

    ``embeddings[m]`` is ``(B, D)``, modality m's text embeddings of the same B texts in the
    shared space. Entry ``[j, k]`` is :func:`mean_squared_distance` of sets j and k; the
    matrix is symmetric with a zero diagonal, so the weighted binding term
    ``sum_{j != k} w_j w_k L_MSE^(j,k)`` is ``(w[:, None] * w[None, :] * matrix).sum()``.
    """
    if len(embeddings) < 2:
        raise ValueError(f"pairwise_mse needs at least two embedding sets, got {len(embeddings)}")
    shapes = {tuple(e.shape) for e in embeddings}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all embedding sets must be (B, D) of one shape, got {sorted(shapes)}")
    stacked = torch.stack(list(embeddings))  # (M, B, D)
    differences = stacked[:, None] - stacked[None, :]  # (M, M, B, D)
    return differences.pow(2).sum(dim=-1).mean(dim=-1)


def embedding_mse(a: Tensor, b: Tensor) -> Tensor:
    """``F.mse_loss``: the mean of squared differences over the batch AND the D dimensions.

    This is the text-alignment / distillation distance M3Bind trains with. The paper's eq. 2
    leaves the normalisation open; the authors' code uses ``F.mse_loss`` and their lambda = 10
    is tuned for that scale (``mean_squared_distance`` is D times larger, which with lambda = 10
    lets the alignment term swamp the CLIP terms and collapses the text spaces).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two (B, D) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.mse_loss(a, b)
