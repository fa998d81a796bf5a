"""Write small real-format study files (DICOM, NIfTI, WFDB) for the reader and transform tests.

Each writer uses the format's own library, so the readers are tested against files those
libraries (and therefore scanners and archives) produce, not against our own encoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import wfdb
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

TWELVE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def write_dicom(path: Path, pixels: np.ndarray, *, slope: float | None = None,
                intercept: float | None = None, photometric: str = "MONOCHROME2",
                bits_stored: int = 12, pixel_spacing: Sequence[float] | None = (0.5, 0.7),
                position: Sequence[float] | None = None,
                orientation: Sequence[float] | None = (1, 0, 0, 0, 1, 0),
                instance_number: int | None = None, series_uid: str | None = None,
                modality: str = "CT", patient_id: str | None = "P001",
                extra: dict[str, Any] | None = None) -> Path:
    """Write uint16 ``pixels`` ((H, W), or (frames, H, W) for multi-frame) as a DICOM file."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint16)
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = CTImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    if position is not None:
        ds.ImagePositionPatient = list(position)
    if orientation is not None:
        ds.ImageOrientationPatient = list(orientation)
    if instance_number is not None:
        ds.InstanceNumber = instance_number
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, data: np.ndarray, zooms: Sequence[float] = (0.8, 0.8, 2.5), *,
                slope: float | None = None, intercept: float | None = None) -> Path:
    """Write ``data`` (x, y, z) with a diagonal RAS affine of ``zooms`` and optional scl_slope/inter."""
    affine = np.diag([*zooms, 1.0])
    image = nib.Nifti1Image(data, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, intercept or 0.0)
    nib.save(image, path)
    return path


def write_wfdb(folder: Path, name: str, signal: np.ndarray, fs: float,
               lead_names: Sequence[str] | None = None, adc_gain: float = 1000.0) -> Path:
    """Write ``signal`` (T, leads) in mV as a 16-bit WFDB record; returns the ``.hea`` path."""
    n_leads = signal.shape[1]
    names = list(lead_names) if lead_names is not None else TWELVE_LEADS[:n_leads]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n_leads, sig_name=names, p_signal=signal,
                fmt=["16"] * n_leads, adc_gain=[adc_gain] * n_leads, baseline=[0] * n_leads,
                write_dir=str(folder))
    return folder / f"{name}.hea"


def synthetic_ecg(n_samples: int, fs: float, n_leads: int = 12) -> np.ndarray:
    """(T, leads) sinusoids of distinct frequencies and amplitudes (mV), smooth enough to resample."""
    t = np.arange(n_samples) / fs
    return np.stack([(0.3 + 0.1 * lead) * np.sin(2 * np.pi * (1.0 + 0.5 * lead) * t) + 0.05 * lead
                     for lead in range(n_leads)], axis=1)
