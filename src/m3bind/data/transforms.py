"""Per-modality preprocessing: a :class:`~m3bind.data.readers.Study` -> the tensor an encoder takes.

The settings are the pydantic specs of :mod:`m3bind.data.preprocess_specs`;
:func:`default_preprocess` gives a built-in modality's published settings or the small sizes
of the built-in demo models (both from :data:`m3bind.modalities.BUILTIN_MODALITIES`), and
:func:`build_transform` turns a spec into a picklable callable for DataLoader workers.

Outputs: X-ray ``(C, size, size)`` in [-1, 1]; CT ``(1, D, H, W)`` in [-1, 1]; retina
``(3, size, size)`` in [0, 1]; pathology ``(3, size, size)`` normalised with the OpenAI CLIP
mean/std; ECG ``(leads, fs * duration_s)``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from m3bind.data.preprocess_specs import (SPEC_TYPES, CTPreprocess, ECGPreprocess, PathologyPreprocess,
                                          PreprocessSpec, RetinaPreprocess, XrayPreprocess)
from m3bind.data.readers import Study, lead_names_of, nonfinite_problem, resample_signal
from m3bind.errors import ConfigError, DataError, listed
from m3bind.modalities import BUILTIN_MODALITIES
from m3bind.signal_kinds import SignalKind

# A lead whose standard deviation is below this (1 nV when the signal is in mV) is flat.
_FLAT_LEAD_STD = 1e-6

# ITU-R BT.601 luma weights, the ones cv2 and Pillow use to turn RGB into grayscale.
_LUMA = (0.299, 0.587, 0.114)


# Raised whenever a transform's output changes for the same file and settings, so that
# preprocessed-study caches written by earlier code are rebuilt (2: photos of any bit depth).
TRANSFORM_VERSION = 2


def default_preprocess(modality: str, demo: bool = False) -> PreprocessSpec:
    """Preprocessing settings of a built-in modality: the published model's, or the demo's."""
    info = BUILTIN_MODALITIES.get(modality)
    if info is None:
        raise ConfigError(f"no default preprocessing for modality '{modality}'; known: "
                          f"{', '.join(BUILTIN_MODALITIES)} (custom modalities must give a "
                          "'preprocess' section)")
    settings = info.demo_preprocess if demo else {}
    return info.preprocess(**settings)


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
    use :class:`~m3bind.data.preprocess_specs.CTPreprocess`), a dict validated by the built-in
    modality's spec class, or None for the published defaults.
    """
    if spec is None:
        spec = default_preprocess(modality)
    elif isinstance(spec, dict):
        if modality not in BUILTIN_MODALITIES:
            raise ConfigError(f"modality '{modality}' is not built in; pass a preprocessing model "
                              f"({', '.join(t.__name__ for t in SPEC_TYPES)})")
        spec = BUILTIN_MODALITIES[modality].preprocess.model_validate(spec)
    elif not isinstance(spec, SPEC_TYPES):
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


def _photo_on_8bit_scale(study: Study) -> np.ndarray:
    """A photograph's pixels on the 0..255 scale that ``max_value`` (255) is set for. Colour
    images are read as 8-bit already; a grayscale file keeps its own units, so a 16-bit photo
    (0..65535) or a float one (0..1) would be saturated or black after dividing by 255."""
    mode = str(study.meta.get("mode", ""))
    if mode.startswith("I;16"):
        return study.array / 257.0
    if mode in ("F", "I") and study.array.size:
        peak = float(np.nanmax(study.array))
        if mode == "F" and peak <= 1.0:
            return study.array * 255.0
        if 255.0 < peak <= 65535.0:
            return study.array / 257.0
    return study.array


def _preprocess_retina(study: Study, spec: RetinaPreprocess) -> torch.Tensor:
    image = _to_rgb(_to_chw(_photo_on_8bit_scale(study))) / spec.max_value
    image = _resize_longest_side(image, spec.size, InterpolationMode.BILINEAR).clamp(0.0, 1.0)
    height, width = image.shape[-2:]
    # FLAIR's canvas: the image sits in the top-left corner, zeros fill right and bottom.
    return F.pad(image, (0, spec.size - width, 0, spec.size - height), value=0.0)


def _preprocess_pathology(study: Study, spec: PathologyPreprocess) -> torch.Tensor:
    image = _to_rgb(_to_chw(_photo_on_8bit_scale(study))) / spec.max_value
    image = TF.resize(image, [spec.size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    # Bicubic overshoots; open_clip resizes 8-bit PIL images, which clip to the valid range.
    image = TF.center_crop(image, [spec.size, spec.size]).clamp(0.0, 1.0)
    return TF.normalize(image, list(spec.mean), list(spec.std))


_INDEPENDENT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def twelve_from_eight_leads(signal: np.ndarray, names: list[str]) -> np.ndarray | None:
    """The standard 12 leads from the 8 independent ones (I, II, V1-V6), which is how many
    recorders store them: III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2
    (Einthoven's law and Goldberger's augmented leads). None when those 8 are not all named."""
    index = {name: i for i, name in enumerate(names)}
    if not all(lead in index for lead in _INDEPENDENT_LEADS):
        return None
    lead_i, lead_ii = signal[index["I"]], signal[index["II"]]
    limb = [lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    return np.stack(limb + [signal[index[f"V{k}"]] for k in range(1, 7)]).astype(signal.dtype)


def _preprocess_ecg(study: Study, spec: ECGPreprocess) -> torch.Tensor:
    signal = study.array
    if signal.shape[0] != spec.leads:
        derived = twelve_from_eight_leads(signal, lead_names_of(study)) if spec.leads == 12 else None
        if derived is None:
            transposed = (f"; an array of shape {tuple(signal.shape)} looks transposed: leads go first, (leads, samples)"
                          if signal.ndim == 2 and signal.shape[1] == spec.leads else "")
            raise _fail(study, f"ECG has {signal.shape[0]} leads ({listed(lead_names_of(study), 15)}), "
                               f"expected {spec.leads}"
                               + (" (or the 8 independent leads I, II, V1-V6, from which the others are derived)"
                                  if spec.leads == 12 else "") + transposed)
        signal = derived
    fs_in = study.meta.get("fs")
    if fs_in is None:
        raise _fail(study, "ECG has no sampling rate ('fs') in its metadata (a .npy array states none: save "
                           "ECGs as WFDB records or DICOM waveforms, which do)")
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
