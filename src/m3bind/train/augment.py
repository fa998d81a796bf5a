"""Light train-time augmentation on preprocessed tensors, for pretraining the built-in models.

The demo cohort is small (tens to hundreds of studies per modality), so without augmentation
the small encoders memorise it. We jitter what acquisition would: position (a circular shift of
a few percent along every spatial/time axis), gain (intensity scale) and offset. Deterministic
given the generator, so resumed runs see the same augmented batches.
"""
from __future__ import annotations

import torch
from torch import Tensor


def augment_batch(images: Tensor, generator: torch.Generator, max_shift: float = 0.06,
                  gain: float = 0.1, offset: float = 0.05) -> Tensor:
    """(B, C, *spatial) -> same shape; per-sample random shift, gain and offset."""
    out = torch.empty_like(images)
    # Signals (B, leads, T) shift in time only; images and volumes along every spatial axis.
    spatial_axes = (2,) if images.ndim == 3 else tuple(range(2, images.ndim))
    for i in range(images.shape[0]):
        shifts = [int(torch.randint(-int(max_shift * images.shape[a]), int(max_shift * images.shape[a]) + 1,
                                    (1,), generator=generator)) for a in spatial_axes]
        sample = torch.roll(images[i], shifts=shifts, dims=[a - 1 for a in spatial_axes])
        scale = 1 + gain * (2 * torch.rand(1, generator=generator) - 1)
        shift = offset * (2 * torch.rand(1, generator=generator) - 1)
        out[i] = sample * scale + shift
    return out
