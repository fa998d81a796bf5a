"""Adaptive modality balancing (AMB, paper section 3.3, eq. 3-5).

Given the training-set sizes |D_m|:
- sampling probabilities  p_m = (1/|D_m|)^beta / sum_k (1/|D_k|)^beta   (eq. 3)
- learning-rate scales    eta_m = eta_0 / sqrt(|D_m|)                     (eq. 4)
- loss weights            w_m = 1 / sqrt(|D_m|)                          (eq. 5)

Our one decision where the paper is silent: eq. 4 and 5 taken literally shrink everything by
sqrt(|D|) (a 300k-image X-ray set would train at 2e-5/550), so the absolute values depend on
how big the datasets are. We keep the paper's *ratios* and normalise the scales and the weights
to mean 1 over the bound modalities (``normalize=True``, the default): eta_0 stays the average
learning rate and lambda keeps its meaning whatever the dataset sizes. ``normalize=False`` gives
the literal formulas. Each part can be switched off (then uniform: p_m = 1/M, scale 1, w_m = 1).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Balance:
    probabilities: dict[str, float]
    lr_scales: dict[str, float]
    loss_weights: dict[str, float]


def sampling_probabilities(sizes: Mapping[str, int], beta: float) -> dict[str, float]:
    raw = {m: (1.0 / n) ** beta for m, n in sizes.items()}
    total = sum(raw.values())
    return {m: v / total for m, v in raw.items()}


def inverse_sqrt(sizes: Mapping[str, int], normalize: bool) -> dict[str, float]:
    raw = {m: 1.0 / math.sqrt(n) for m, n in sizes.items()}
    if not normalize:
        return raw
    mean = sum(raw.values()) / len(raw)
    return {m: v / mean for m, v in raw.items()}


def modality_balance(sizes: Mapping[str, int], *, sampling: bool = True, lr_scaling: bool = True,
                     loss_weights: bool = True, beta: float = 0.5, normalize: bool = True) -> Balance:
    """All three AMB quantities for the given dataset sizes; switched-off parts are uniform."""
    if not sizes:
        raise ValueError("modality_balance needs at least one modality")
    bad = {m: n for m, n in sizes.items() if n <= 0}
    if bad:
        raise ValueError(f"dataset sizes must be positive, got {bad}")
    uniform = {m: 1.0 for m in sizes}
    return Balance(
        probabilities=sampling_probabilities(sizes, beta) if sampling else {m: 1.0 / len(sizes) for m in sizes},
        lr_scales=inverse_sqrt(sizes, normalize) if lr_scaling else uniform,
        loss_weights=inverse_sqrt(sizes, normalize) if loss_weights else uniform,
    )
