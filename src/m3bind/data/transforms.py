"""Per-modality preprocessing: a :class:`~m3bind.data.readers.Study` -> the tensor an encoder takes.

Each modality has a pydantic settings model whose defaults reproduce the published model's
evaluation preprocessing (MGCA, CT-CLIP, FLAIR, QuiltNet via open_clip, and 10 s at 500 Hz
for the M3Bind authors' ECG-CLIP). Experiment configs embed these models
as ``preprocess:`` sections; :func:`default_preprocess` gives the published settings or the
small sizes of the built-in demo models, and :func:`build_transform` turns a settings model
into a picklable callable for DataLoader workers.

Outputs: X-ray ``(C, size, size)`` in [-1, 1]; CT ``(1, D, H, W)`` in [-1, 1]; retina
``(3, size, size)`` in [0, 1]; pathology ``(3, size, size)`` normalised with the OpenAI CLIP
mean/std; ECG ``(leads, fs * duration_s)``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator
from torchvision.transforms import InterpolationMode

from m3bind.data.readers import Study, lead_names_of, nonfinite_problem, resample_signal
from m3bind.errors import ConfigError, DataError
from m3bind.modalities import SignalKind

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# A lead whose standard deviation is below this (1 nV when the signal is in mV) is flat.
_FLAT_LEAD_STD = 1e-6

# ITU-R BT.601 luma weights, the ones cv2 and Pillow use to turn RGB into grayscale.
_LUMA = (0.299, 0.587, 0.114)


class XrayPreprocess(BaseModel):
    """MGCA-style chest X-ray preprocessing (eval path: resize, zero-pad, center crop)."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[SignalKind] = SignalKind.IMAGE_2D

    size: PositiveInt = Field(224, description="Side of the square output (center crop), pixels.")
    resize: PositiveInt = Field(256, description="The longest image side is resized to this "
                                "(aspect kept), then zero-padded to a square, before the crop.")
    channels: Literal[1, 3] = Field(3, description="Output channels: 3 (grayscale repeated) for "
                                    "MGCA's ViT, 1 for the built-in X-ray encoder.")
    window: tuple[float, float] | None = Field(None, description="(low, high) intensity window "
                                               "in the file's units mapped to 0..1; None scales "
                                               "each image by its own min/max.")
    mean: float = Field(0.5, description="Subtracted after scaling to 0..1 (MGCA: 0.5).")
    std: PositiveFloat = Field(0.5, description="Divisor after the mean (MGCA: 0.5), giving [-1, 1].")

    @model_validator(mode="after")
    def _window_is_ordered(self) -> XrayPreprocess:
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ValueError(f"window low must be below high, got {self.window}")
        return self

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the tensor the transform returns."""
        return (self.channels, self.size, self.size)


class CTPreprocess(BaseModel):
    """CT-CLIP-style volume preprocessing: HU clip, resample to fixed spacing, scale, crop/pad."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[SignalKind] = SignalKind.VOLUME_3D

    hu_min: float = Field(-1000.0, description="HU values below this are clipped to it.")
    hu_max: float = Field(1000.0, description="HU values above this are clipped to it.")
    scale: PositiveFloat = Field(1000.0, description="Clipped HU are divided by this "
                                 "(CT-CLIP: 1000, so [-1000, 1000] HU -> [-1, 1]).")
    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        (1.5, 0.75, 0.75), description="Target voxel spacing (z, y, x) in mm for trilinear "
        "resampling; None keeps the voxel grid as read.")
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = Field(
        (240, 480, 480), description="Output (D, H, W) after center crop / pad.")
    pad_value: float = Field(-1.0, description="Value of padded voxels, after scaling "
                             "(-1 is air, -1000 HU).")

    @model_validator(mode="after")
    def _hu_range_is_ordered(self) -> CTPreprocess:
        if not self.hu_min < self.hu_max:
            raise ValueError(f"hu_min must be below hu_max, got {self.hu_min} >= {self.hu_max}")
        return self

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the tensor the transform returns."""
        return (1, *self.shape)


class RetinaPreprocess(BaseModel):
    """FLAIR-style fundus preprocessing: [0, 1] RGB, longest side to ``size``, pad right/bottom."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[SignalKind] = SignalKind.IMAGE_2D

    size: PositiveInt = Field(512, description="Longest side after resizing and side of the "
                              "square canvas, pixels.")
    max_value: PositiveFloat = Field(255.0, description="Input value that maps to 1.0 "
                                     "(255 for 8-bit photographs).")

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the tensor the transform returns."""
        return (3, self.size, self.size)


class PathologyPreprocess(BaseModel):
    """open_clip / QuiltNet eval preprocessing: bicubic shortest-side resize, crop, CLIP norm."""

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[SignalKind] = SignalKind.IMAGE_2D

    size: PositiveInt = Field(224, description="Shortest side after resizing and side of the "
                              "center crop, pixels.")
    mean: tuple[float, float, float] = Field(OPENAI_CLIP_MEAN, description="Per-channel mean "
                                             "subtracted after scaling to 0..1 (OpenAI CLIP).")
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = Field(
        OPENAI_CLIP_STD, description="Per-channel divisor after the mean (OpenAI CLIP).")
    max_value: PositiveFloat = Field(255.0, description="Input value that maps to 1.0.")

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the tensor the transform returns."""
        return (3, self.size, self.size)


class ECGPreprocess(BaseModel):
    """ECG preprocessing: resample to ``fs``, crop / zero-pad to ``duration_s``, optional z-score.

    The default per-lead z-score removes each lead's baseline offset and the gain differences
    between recorders, which otherwise dominate a per-sample encoder; the price is that
    absolute amplitudes (e.g. voltage criteria for hypertrophy) are lost, so use "none" for
    encoders trained on raw mV.
    """

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[SignalKind] = SignalKind.SIGNAL_1D

    leads: PositiveInt = Field(12, description="Number of leads every record must have.")
    fs: PositiveFloat = Field(500.0, description="Target sampling rate in Hz (records are "
                              "resampled to it).")
    duration_s: PositiveFloat = Field(10.0, description="Output length in seconds: the first "
                                      "fs * duration_s samples, zero-padded at the end if shorter.")
    normalize: Literal["none", "per_lead_zscore"] = Field(
        "per_lead_zscore", description="'per_lead_zscore' standardises each lead to mean 0, "
        "std 1 over its real samples (padding stays 0); 'none' keeps mV.")

    def n_samples(self) -> int:
        """Output length in samples."""
        return int(round(self.fs * self.duration_s))

    def output_shape(self) -> tuple[int, ...]:
        """Shape of the tensor the transform returns."""
        return (self.leads, self.n_samples())


PreprocessSpec = Union[XrayPreprocess, CTPreprocess, RetinaPreprocess, PathologyPreprocess,
                       ECGPreprocess]

PREPROCESS_TYPES: dict[str, type[BaseModel]] = {
    "xray": XrayPreprocess,
    "ct": CTPreprocess,
    "retina": RetinaPreprocess,
    "ecg": ECGPreprocess,
    "pathology": PathologyPreprocess,
}

# Sizes of the small built-in models that the demo pre-trains on the synthetic cohort.
_DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "xray": {"size": 64, "resize": 72, "channels": 1},
    "ct": {"spacing": (5.0, 5.0, 5.0), "shape": (32, 64, 64)},
    "retina": {"size": 64},
    "pathology": {"size": 64},
    "ecg": {"fs": 100.0},
}


def default_preprocess(modality: str, demo: bool = False) -> PreprocessSpec:
    """Preprocessing settings of a built-in modality: the published model's, or the demo's."""
    if modality not in PREPROCESS_TYPES:
        raise ConfigError(f"no default preprocessing for modality '{modality}'; known: "
                          f"{', '.join(PREPROCESS_TYPES)} (custom modalities must give a "
                          "'preprocess' section)")
    settings = _DEMO_SETTINGS[modality] if demo else {}
    return PREPROCESS_TYPES[modality](**settings)


class PreprocessTransform:
    """Callable ``Study -> torch.Tensor`` for one modality.

    Holds only the modality name and its settings model, so it pickles for DataLoader workers.
    """

    def __init__(self, modality: str, spec: PreprocessSpec):
        self.modality = modality
        self.spec = spec

    def __call__(self, study: Study) -> torch.Tensor:
        _check_input_kind(study, self.spec.kind, self.modality)
        return _APPLY[type(self.spec)](study, self.spec)

    def __repr__(self) -> str:
        return f"PreprocessTransform({self.modality!r}, {self.spec!r})"


def build_transform(modality: str, spec: PreprocessSpec | dict[str, Any] | None = None
                    ) -> PreprocessTransform:
    """The transform of ``modality`` with settings ``spec``.

    ``spec`` may be a settings model (any of the five, so a custom modality such as "mri" can
    use :class:`CTPreprocess`), a dict validated by the built-in modality's model, or None for
    the published defaults.
    """
    if spec is None:
        spec = default_preprocess(modality)
    elif isinstance(spec, dict):
        if modality not in PREPROCESS_TYPES:
            raise ConfigError(f"modality '{modality}' is not built in; pass a preprocessing model "
                              f"({', '.join(t.__name__ for t in PREPROCESS_TYPES.values())})")
        spec = PREPROCESS_TYPES[modality].model_validate(spec)
    elif not isinstance(spec, tuple(_APPLY)):
        raise ConfigError(f"unsupported preprocessing settings {type(spec).__name__} for "
                          f"modality '{modality}'")
    return PreprocessTransform(modality, spec)


# --------------------------------------------------------------------------- shared helpers

def _fail(study: Study, problem: str) -> DataError:
    return DataError(study.meta.get("path"), problem)


def _check_input_kind(study: Study, kind: SignalKind, modality: str) -> None:
    """Refuse a study of the wrong kind or dimensionality before any processing."""
    shape = study.array.shape
    source_kind = study.meta.get("kind")
    if source_kind is not None and SignalKind(source_kind) != kind:
        raise _fail(study, f"the {modality} transform needs a {kind.value} study, "
                           f"got a {SignalKind(source_kind).value} of shape {shape}")
    if kind == SignalKind.IMAGE_2D:
        fits, wanted = len(shape) == 2 or (len(shape) == 3 and shape[2] == 3), "(H, W) or (H, W, 3)"
    elif kind == SignalKind.VOLUME_3D:
        fits, wanted = len(shape) == 3, "(D, H, W)"
    else:
        fits, wanted = len(shape) == 2, "(leads, T)"
    if not fits:
        raise _fail(study, f"the {modality} transform needs an array of shape {wanted}, "
                           f"got {shape}")
    problem = nonfinite_problem(study.array,
                                lead_names_of(study) if kind == SignalKind.SIGNAL_1D else None)
    if problem:
        raise _fail(study, problem)


def _to_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W) -> (1, H, W); (H, W, 3) -> (3, H, W); float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def _to_rgb(image: torch.Tensor) -> torch.Tensor:
    return image.expand(3, -1, -1).clone() if image.shape[0] == 1 else image


def _to_gray(image: torch.Tensor) -> torch.Tensor:
    if image.shape[0] == 1:
        return image
    weights = torch.tensor(_LUMA, dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True)


def _resize_longest_side(image: torch.Tensor, target: int, interpolation: InterpolationMode
                         ) -> torch.Tensor:
    """Resize (C, H, W) so that max(H, W) == target, keeping the aspect ratio."""
    height, width = image.shape[-2:]
    factor = target / max(height, width)
    new_size = [max(1, round(height * factor)), max(1, round(width * factor))]
    return TF.resize(image, new_size, interpolation=interpolation, antialias=True)


def _center_crop_or_pad(tensor: torch.Tensor, shape: Sequence[int], value: float) -> torch.Tensor:
    """Center-crop or pad the last ``len(shape)`` axes of ``tensor`` to ``shape``.

    When the difference is odd, the extra padded or cropped element is at the end.
    """
    first_axis = tensor.ndim - len(shape)
    pads: list[tuple[int, int]] = []
    for offset, target in enumerate(shape):
        axis = first_axis + offset
        size = tensor.shape[axis]
        if size > target:
            tensor = tensor.narrow(axis, (size - target) // 2, target)
        before = max(0, (target - size) // 2)
        pads.append((before, max(0, target - size) - before))
    # F.pad lists (before, after) pairs from the last axis backwards.
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(tensor, flat, value=value) if any(flat) else tensor


# --------------------------------------------------------------------------- per modality

def _preprocess_xray(study: Study, spec: XrayPreprocess) -> torch.Tensor:
    image = _to_gray(_to_chw(study.array))
    if spec.window is not None:
        low, high = spec.window
    else:
        low, high = float(image.min()), float(image.max())
    # MGCA maps each radiograph to 0..255 (and ToTensor to 0..1); we go to 0..1 directly
    # and keep float precision instead of rounding to uint8.
    image = ((image - low) / max(high - low, 1e-12)).clamp(0.0, 1.0)
    image = _resize_longest_side(image, spec.resize, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
    image = _center_crop_or_pad(image, (spec.resize, spec.resize), 0.0)  # zero-pad, centered
    image = _center_crop_or_pad(image, (spec.size, spec.size), 0.0)
    image = (image - spec.mean) / spec.std
    return image.expand(spec.channels, -1, -1).contiguous()


def _preprocess_ct(study: Study, spec: CTPreprocess) -> torch.Tensor:
    volume = torch.from_numpy(np.ascontiguousarray(study.array, dtype=np.float32))
    volume = volume.clamp(spec.hu_min, spec.hu_max)
    if spec.spacing is not None:
        spacing = study.meta.get("spacing")
        if spacing is None:
            raise _fail(study, "volume has no voxel spacing in its metadata, so it cannot be "
                               f"resampled to {spec.spacing} mm; set spacing: null to skip")
        new_size = [max(1, round(n * s_in / s_out))
                    for n, s_in, s_out in zip(volume.shape, spacing, spec.spacing)]
        if list(volume.shape) != new_size:
            volume = F.interpolate(volume[None, None], size=new_size, mode="trilinear",
                                   align_corners=False)[0, 0]
    volume = volume / spec.scale
    return _center_crop_or_pad(volume, spec.shape, spec.pad_value).unsqueeze(0)


def _preprocess_retina(study: Study, spec: RetinaPreprocess) -> torch.Tensor:
    image = _to_rgb(_to_chw(study.array)) / spec.max_value
    image = _resize_longest_side(image, spec.size, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
    height, width = image.shape[-2:]
    # FLAIR's canvas: the image sits in the top-left corner, zeros fill right and bottom.
    return F.pad(image, (0, spec.size - width, 0, spec.size - height), value=0.0)


def _preprocess_pathology(study: Study, spec: PathologyPreprocess) -> torch.Tensor:
    image = _to_rgb(_to_chw(study.array)) / spec.max_value
    image = TF.resize(image, [spec.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    # Bicubic overshoots; open_clip resizes 8-bit PIL images, which clip to the valid range.
    image = TF.center_crop(image, [spec.size, spec.size]).clamp(0.0, 1.0)
    return TF.normalize(image, list(spec.mean), list(spec.std))


def _preprocess_ecg(study: Study, spec: ECGPreprocess) -> torch.Tensor:
    signal = study.array
    if signal.shape[0] != spec.leads:
        raise _fail(study, f"ECG has {signal.shape[0]} leads, expected {spec.leads}")
    fs_in = study.meta.get("fs")
    if fs_in is None:
        raise _fail(study, "ECG has no sampling rate ('fs') in its metadata")
    signal = resample_signal(signal, float(fs_in), spec.fs)[:, :spec.n_samples()]
    if spec.normalize == "per_lead_zscore":
        signal = signal.astype(np.float64)  # float32 rounding gives a flat lead std ~1e-7
        mean = signal.mean(axis=1, keepdims=True)
        std = signal.std(axis=1, keepdims=True)
        # A flat lead (e.g. a disconnected electrode) becomes all zeros instead of noise or NaN.
        flat = std < _FLAT_LEAD_STD
        signal = np.where(flat, 0.0, (signal - mean) / np.where(flat, 1.0, std))
    tensor = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
    return F.pad(tensor, (0, spec.n_samples() - tensor.shape[1]), value=0.0)


_APPLY = {
    XrayPreprocess: _preprocess_xray,
    CTPreprocess: _preprocess_ct,
    RetinaPreprocess: _preprocess_retina,
    PathologyPreprocess: _preprocess_pathology,
    ECGPreprocess: _preprocess_ecg,
}
