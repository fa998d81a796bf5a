"""The shapes of signal m3bind reads and preprocesses: 2D images, 3D volumes and 1D multi-lead signals.

A reader tags each study with its kind and a preprocessing spec declares the kind it takes,
so a study of the wrong shape is refused before any processing. Built-in modalities have a
kind (:mod:`m3bind.modalities`); a user's own modality picks one through its spec.
"""
from __future__ import annotations

from enum import Enum


class SignalKind(str, Enum):
    IMAGE_2D = "image2d"      # (C, H, W): X-ray (C=1), retina and pathology (C=3)
    VOLUME_3D = "volume3d"    # (1, D, H, W): CT, MRI
    SIGNAL_1D = "signal1d"    # (leads, T): ECG
