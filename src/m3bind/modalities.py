"""The imaging modalities m3bind knows out of the box, and what kind of signal each one is.

A modality's *kind* decides which reader output shape, transform and built-in encoder it
uses. Users may add their own modality names in a config; they then pick one of these kinds.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class SignalKind(str, Enum):
    IMAGE_2D = "image2d"      # (C, H, W): X-ray (C=1), retina and pathology (C=3)
    VOLUME_3D = "volume3d"    # (1, D, H, W): CT, MRI
    SIGNAL_1D = "signal1d"    # (leads, T): ECG


@dataclass(frozen=True)
class ModalityInfo:
    name: str
    kind: SignalKind
    channels: int
    description: str
    published_model: str


BUILTIN_MODALITIES: dict[str, ModalityInfo] = {
    "xray": ModalityInfo("xray", SignalKind.IMAGE_2D, 1, "chest radiograph", "MGCA"),
    "ct": ModalityInfo("ct", SignalKind.VOLUME_3D, 1, "chest CT volume", "CT-CLIP"),
    "retina": ModalityInfo("retina", SignalKind.IMAGE_2D, 3, "colour fundus photograph", "FLAIR"),
    "ecg": ModalityInfo("ecg", SignalKind.SIGNAL_1D, 12, "12-lead electrocardiogram", "ECG-CLIP (MedBind)"),
    "pathology": ModalityInfo("pathology", SignalKind.IMAGE_2D, 3, "H&E histopathology tile", "QuiltNet"),
}

MODALITY_NAMES: tuple[str, ...] = tuple(BUILTIN_MODALITIES)


def modality_info(name: str) -> ModalityInfo:
    try:
        return BUILTIN_MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality '{name}'; built-in modalities are {', '.join(MODALITY_NAMES)}") from None
