"""Size limits for decoding studies (kept apart from the readers so the config can name them
without importing every file-format library)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt


class ReadLimits(BaseModel):
    """The largest study the readers decode; a bigger one is refused from its header.

    The defaults are far above any real radiograph, fundus photograph, CT scan or diagnostic
    ECG, yet keep a corrupt or hostile header from making a reader allocate tens of gigabytes.
    Whole-slide pathology images are read tile by tile with :mod:`m3bind.data.wsi` instead.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_image_pixels: PositiveInt = Field(
        100_000_000, description="Most pixels (H x W) of a 2D image (100 megapixels).")
    max_volume_voxels: PositiveInt = Field(
        2 ** 29, description="Most voxels (D x H x W) of a 3D volume (2048 slices of 512 x 512).")
    max_frames: PositiveInt = Field(
        10_000, description="Most frames of a multi-frame DICOM file or slices of a DICOM folder.")
    max_signal_samples: PositiveInt = Field(
        100_000_000, description="Most samples (leads x T) of an ECG.")
