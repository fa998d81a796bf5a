"""The imaging modalities m3bind knows out of the box: every per-modality fact in one table.

A modality's *kind* decides which reader output shape, transform and built-in encoder it
uses. Users may add their own modality names in a config; they then pick a preprocessing spec
(and with it a kind) themselves. The synthetic cohort renders the same names
(:data:`m3bind.cohort.writer.RENDERERS`).

Only torch-free modules are imported here, so anything may read the table cheaply.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from m3bind.data.preprocess_specs import (CTPreprocess, ECGPreprocess, PathologyPreprocess, PreprocessSpec,
                                          RetinaPreprocess, XrayPreprocess)
from m3bind.signal_kinds import SignalKind


@dataclass(frozen=True)
class ModalityInfo:
    name: str
    kind: SignalKind
    channels: int                        # input channels of the built-in encoder
    description: str
    published_model: str                 # whose preprocessing and embedding width the defaults follow
    preprocess: type[PreprocessSpec]     # spec class; its defaults are the published model's settings
    demo_preprocess: Mapping[str, Any]   # spec overrides for the small built-in models of the demo
    # Embedding width of the built-in model. X-ray is narrower, as MGCA's 128-d space is next to
    # the other published models' wider ones, so binding heads have real work to do.
    builtin_native_dim: int


BUILTIN_MODALITIES: dict[str, ModalityInfo] = {
    "xray": ModalityInfo("xray", SignalKind.IMAGE_2D, 1, "chest radiograph", "MGCA",
                         XrayPreprocess, {"size": 64, "resize": 72, "channels": 1}, builtin_native_dim=128),
    "ct": ModalityInfo("ct", SignalKind.VOLUME_3D, 1, "chest CT volume", "CT-CLIP",
                       CTPreprocess, {"spacing": (5.0, 5.0, 5.0), "shape": (32, 64, 64)}, builtin_native_dim=256),
    "retina": ModalityInfo("retina", SignalKind.IMAGE_2D, 3, "colour fundus photograph", "FLAIR",
                           RetinaPreprocess, {"size": 64}, builtin_native_dim=256),
    "ecg": ModalityInfo("ecg", SignalKind.SIGNAL_1D, 12, "12-lead electrocardiogram", "ECG-CLIP (MedBind)",
                        ECGPreprocess, {"fs": 100.0}, builtin_native_dim=256),
    "pathology": ModalityInfo("pathology", SignalKind.IMAGE_2D, 3, "H&E histopathology tile", "QuiltNet",
                              PathologyPreprocess, {"size": 64}, builtin_native_dim=256),
}

MODALITY_NAMES: tuple[str, ...] = tuple(BUILTIN_MODALITIES)


def modality_info(name: str) -> ModalityInfo:
    try:
        return BUILTIN_MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality '{name}'; built-in modalities are {', '.join(MODALITY_NAMES)}") from None
