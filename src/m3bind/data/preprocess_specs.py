"""Preprocessing settings of each signal: pydantic models, free of torch so any module can import them.

Each spec's defaults reproduce a published model's evaluation preprocessing (MGCA, CT-CLIP,
FLAIR, QuiltNet via open_clip, and 10 s at 500 Hz for the M3Bind authors' ECG-CLIP).
Experiment configs embed them as ``preprocess:`` sections; a custom modality (say "mri") uses
any of them. Each declares the :class:`~m3bind.signal_kinds.SignalKind` it takes and the
shape it outputs; :mod:`m3bind.data.transforms` applies them.
"""
from __future__ import annotations

from typing import ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from m3bind.signal_kinds import SignalKind

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
# Every spec class m3bind knows: the only ones a saved file may name.
SPEC_TYPES: tuple[type[BaseModel], ...] = get_args(PreprocessSpec)
