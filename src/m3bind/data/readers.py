"""Read one medical study (DICOM, NIfTI, WFDB, PNG/JPEG/TIFF or NumPy) into an array plus metadata.

:func:`read_study` picks the reader from the path and returns a :class:`Study` whose array
follows one convention per signal kind, whatever the file format was:

* 2D grayscale image: ``(H, W)`` float32 in the file's own units. DICOM pixels go through the
  modality LUT / RescaleSlope+RescaleIntercept; MONOCHROME1 images are inverted first (within
  the range of their stored bits) so that a higher value is always brighter.
* 2D colour image: ``(H, W, 3)`` float32 in 0..255 (alpha dropped, palette images expanded).
* 3D volume: ``(D, H, W)`` float32 (HU for CT) with ``meta["spacing"] = (z, y, x)`` in mm.
  Axis order is that of a standard axial DICOM series: slice index grows towards the head
  (S), rows towards the patient's back (P), columns towards the patient's left (L). DICOM
  series are stacked in order of position along the slice normal; NIfTI volumes are
  reoriented to the closest LPS axes with nibabel and transposed to (z, y, x), so the same
  scan gives the same array from either format.
* ECG (WFDB records and DICOM 12-lead / general ECG waveforms): ``(leads, T)`` float32 in mV,
  with ``meta["fs"]``, ``lead_names``, ``units`` and ``duration_s``. DICOM leads are put in
  the standard order I, II, III, aVR, aVL, aVF, V1-V6 by their channel labels.

A DICOM spacing stated as zero, negative or not a number counts as not stated (``None``);
malformed slice positions or orientations fall back to InstanceNumber order.

Every reader stores ``path``, ``source_format`` and ``kind`` (a :class:`SignalKind`, or
``None`` for a ``.npy`` array whose kind the caller did not state) in ``meta``. Every
problem, including a study larger than the :class:`ReadLimits` allow, raises
:class:`~m3bind.errors.DataError` naming the file and what is wrong; the limits are checked
from the file's header, before anything of that size is decoded.
"""
from __future__ import annotations

import io
import math
import re
import struct
import tokenize
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pydicom
import pydicom.errors
import pydicom.misc
import scipy.signal
import wfdb
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut

from m3bind.data.limits import ReadLimits
from m3bind.errors import DataError
from m3bind.signal_kinds import SignalKind

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_EXTENSIONS = (".dcm", ".nii", ".nii.gz", ".hea", ".dat", *IMAGE_EXTENSIONS, ".npy")
_SUPPORTED_TEXT = (", ".join(SUPPORTED_EXTENSIONS)
                   + ", a folder of DICOM slices, or a WFDB record name without extension")

# Exceptions the libraries raise for unreadable, corrupt or truncated files. pydicom parses
# element values lazily, so a corrupt header only fails when a value is used, with any of these.
_DICOM_ERRORS = (pydicom.errors.InvalidDicomError, pydicom.errors.BytesLengthException,
                 OSError, EOFError, ValueError, KeyError,
                 IndexError, AttributeError, TypeError, NotImplementedError, RuntimeError,
                 struct.error, OverflowError)
_NIFTI_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, TypeError,
                 OverflowError, zlib.error)
_WFDB_ERRORS = (OSError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError,
                ZeroDivisionError, OverflowError)
# numpy parses a header it cannot read directly as Python 2 source, with tokenize and ast.
_NPY_ERRORS = (OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError, RecursionError)
_IMAGE_ERRORS = (UnidentifiedImageError, OSError, EOFError, ValueError, SyntaxError, TypeError,
                 KeyError, IndexError, struct.error, zlib.error)

# Converts an ECG's physical units to mV (the convention of the arrays we return).
_TO_MILLIVOLT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


DEFAULT_LIMITS = ReadLimits()


@dataclass
class Study:
    """One study as read from disk: the array (conventions in the module docstring) and its metadata."""

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def read_study(path: str | Path, expect: SignalKind | None = None, *,
               expected_leads: int | None = None, limits: ReadLimits = DEFAULT_LIMITS) -> Study:
    """Read the study at ``path`` (a file, a folder of DICOM slices or a WFDB record name).

    ``expect`` states which kind of signal the caller needs; a file holding another kind or
    an array of the wrong dimensionality raises :class:`DataError`. ``expected_leads``
    additionally checks the number of leads of a 1D signal. ``limits`` bounds what is decoded.
    """
    path = Path(path)
    fmt = _detect_format(path)
    study = _READERS[fmt](path, limits)
    study.meta["path"] = str(path)
    study.meta.setdefault("source_format", fmt)
    if study.array.size == 0:
        raise DataError(path, f"empty array (shape {study.array.shape})")
    _check_kind(path, study, expect)
    _check_size(path, study, limits)
    is_signal = study.meta.get("kind") == SignalKind.SIGNAL_1D
    problem = nonfinite_problem(study.array, lead_names_of(study) if is_signal else None)
    if problem:
        raise DataError(path, problem)
    if expected_leads is not None and is_signal:
        n_leads = study.array.shape[0]
        if n_leads != expected_leads:
            raise DataError(path, f"the signal has {n_leads} leads, expected {expected_leads}")
    return study


def resample_signal(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Resample ``x`` along its last axis from ``fs_in`` to ``fs_out`` Hz (polyphase filtering).

    The rate ratio is approximated by a fraction with denominator at most 1000, so e.g.
    360 -> 500 Hz uses up=25, down=18 exactly. Returns float32.
    """
    if fs_in <= 0 or fs_out <= 0:
        raise ValueError(f"sampling rates must be positive, got fs_in={fs_in}, fs_out={fs_out}")
    ratio = Fraction(float(fs_out) / float(fs_in)).limit_denominator(1000)
    if ratio == 1:
        return np.asarray(x, dtype=np.float32).copy()
    out = scipy.signal.resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator,
                                     ratio.denominator, axis=-1)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- dispatch

def _detect_format(path: Path) -> str:
    """Name of the reader for ``path``; raises DataError for missing or unsupported paths."""
    try:
        return _format_of(path)
    except (OSError, ValueError) as exc:  # e.g. a name too long or holding a NUL byte
        raise DataError(path, f"cannot access the path: {exc}") from exc


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom_series"
    if name.endswith(".nii.gz") or name.endswith(".nii"):
        fmt = "nifti"
    elif path.suffix.lower() in (".hea", ".dat"):
        if not path.with_suffix(".hea").is_file():
            raise DataError(path, f"WFDB header {path.with_suffix('.hea').name} not found")
        return "wfdb"
    elif path.suffix.lower() == ".dcm":
        fmt = "dicom"
    elif path.suffix.lower() in IMAGE_EXTENSIONS:
        fmt = "image"
    elif path.suffix.lower() == ".npy":
        fmt = "npy"
    elif Path(f"{path}.hea").is_file():
        return "wfdb"  # a record given by its base name, e.g. "records/00001_hr"
    elif path.is_file() and pydicom.misc.is_dicom(path):
        return "dicom"  # DICOM files are often stored without extension (IM0001)
    elif not path.exists():
        raise DataError(path, "file not found")
    else:
        raise DataError(path, f"unsupported file type '{path.suffix or path.name}'; "
                              f"supported: {_SUPPORTED_TEXT}")
    if not path.is_file():
        raise DataError(path, "file not found")
    return fmt


# --------------------------------------------------------------------------- checks

def _check_kind(path: Path, study: Study, expect: SignalKind | None) -> None:
    """Check the array's dimensionality against its own kind and against ``expect``."""
    arr, kind = study.array, study.meta.get("kind")
    if expect is not None:
        expect = SignalKind(expect)
        if kind is not None and kind != expect:
            raise DataError(path, f"the file holds a {_KIND_WORDS[kind]}, "
                                  f"but a {_KIND_WORDS[expect]} is expected")
        kind = study.meta["kind"] = expect
    if kind is None:
        if arr.ndim not in (2, 3):
            raise DataError(path, f"array of shape {arr.shape} has {arr.ndim} dimensions; expected "
                                  "(H, W), (H, W, 3), (D, H, W) or (leads, T)")
        return
    if not _shape_fits(arr.shape, kind):
        raise DataError(path, f"array of shape {arr.shape} does not fit a {_KIND_WORDS[kind]}: "
                              f"expected {_KIND_SHAPES[kind]}")


_KIND_WORDS = {SignalKind.IMAGE_2D: "2D image", SignalKind.VOLUME_3D: "3D volume",
               SignalKind.SIGNAL_1D: "1D signal (ECG)"}
_KIND_SHAPES = {SignalKind.IMAGE_2D: "(H, W) or (H, W, 3)", SignalKind.VOLUME_3D: "(D, H, W)",
                SignalKind.SIGNAL_1D: "(leads, T)"}


def _shape_fits(shape: tuple[int, ...], kind: SignalKind) -> bool:
    if kind == SignalKind.IMAGE_2D:
        return len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)
    if kind == SignalKind.VOLUME_3D:
        return len(shape) == 3
    return len(shape) == 2


def _check_size(path: Path, study: Study, limits: ReadLimits) -> None:
    """Apply the limits of the study's kind to the decoded array (a .npy file is only bounded
    by the largest limit before its kind is known)."""
    shape, kind = study.array.shape, study.meta.get("kind")
    if kind == SignalKind.IMAGE_2D:
        _refuse_if_larger(path, "image", shape[0] * shape[1], limits.max_image_pixels, "pixels")
    elif kind == SignalKind.VOLUME_3D:
        _refuse_if_larger(path, "volume", shape[0], limits.max_frames, "slices")
        _refuse_if_larger(path, "volume", math.prod(shape), limits.max_volume_voxels, "voxels")
    elif kind == SignalKind.SIGNAL_1D:
        _refuse_if_larger(path, "signal", math.prod(shape), limits.max_signal_samples, "samples")


def _refuse_if_larger(path: Path, what: str, count: int, limit: int, unit: str) -> None:
    if count > limit:
        raise DataError(path, f"{what} too large: {count:,} {unit}, above the limit of "
                              f"{limit:,} (ReadLimits)")


def nonfinite_problem(array: np.ndarray, lead_names: Sequence[str] | None = None) -> str | None:
    """Describe the NaN/infinite values of ``array``, or return None when all values are finite.

    With ``lead_names`` the array is a (leads, T) signal and the message names each bad lead,
    e.g. "3 NaN samples in lead V2".
    """
    finite = np.isfinite(array)
    if finite.all():
        return None
    if lead_names is not None:
        problems = []
        for lead, name in enumerate(lead_names):
            n_nan = int(np.isnan(array[lead]).sum())
            n_inf = int(np.isinf(array[lead]).sum())
            if n_nan:
                problems.append(f"{n_nan} NaN samples in lead {name}")
            if n_inf:
                problems.append(f"{n_inf} infinite samples in lead {name}")
        return ", ".join(problems)
    n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    first = tuple(int(i) for i in np.argwhere(~finite)[0])
    return f"{n_nan} NaN and {n_inf} infinite values (first at index {first})"


def lead_names_of(study: Study) -> list[str]:
    """The study's lead names, or "1", "2", ... when the file did not name its leads."""
    names = study.meta.get("lead_names")
    return list(names) if names else [str(i + 1) for i in range(study.array.shape[0])]


def _positive_finite(values: Sequence[Any] | None, n: int) -> tuple[float, ...] | None:
    """``n`` header numbers as floats when all are positive and finite, else None (not stated)."""
    if values is None:
        return None
    try:
        numbers = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    if len(numbers) != n or not all(math.isfinite(v) and v > 0 for v in numbers):
        return None
    return numbers


# --------------------------------------------------------------------------- DICOM

class _ClampedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks for more than the bytes left.

    pydicom reads an element's value, and Pillow a PNG chunk, with ``read(length)`` straight
    from a length field in the file; Python allocates ``length`` bytes before reading, so one
    corrupt length (say 0xFFFFFFF0) would allocate gigabytes for a file of a few kilobytes.
    """

    def __init__(self, path: Path):
        super().__init__(io.FileIO(path))
        self._size = path.stat().st_size

    def read(self, n: int | None = -1) -> bytes:
        if n is not None and n > 0:
            n = min(n, max(0, self._size - self.tell()))
            if n == 0:
                return b""
        return super().read(n)


def _dcmread(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    try:
        with _ClampedReader(path) as f:
            return pydicom.dcmread(f, stop_before_pixels=stop_before_pixels)
    except _DICOM_ERRORS as exc:
        raise DataError(path, f"unreadable DICOM file: {exc}") from exc


_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _stored_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Decoded stored pixel values; colour images come back as RGB (pydicom converts YBR)."""
    if not any(k in ds for k in _PIXEL_DATA_KEYWORDS):
        raise DataError(path, "DICOM file has no pixel data (truncated file, or not an image)")
    try:
        return ds.pixel_array
    except _DICOM_ERRORS as exc:
        if _no_decoder(exc):
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", None) or str(syntax)
            raise DataError(path, f"no installed decoder reads DICOM pixel data compressed as '{name}' "
                                  f"({' '.join(str(exc).split())}); pylibjpeg-libjpeg (GPL-3, not installed "
                                  "with m3bind) decodes 12-bit JPEG Extended, or convert the file with "
                                  "'gdcmconv --raw'") from exc
        raise DataError(path, f"corrupt or truncated DICOM pixel data: {exc}") from exc


def _no_decoder(error: Exception) -> bool:
    """Whether pydicom failed because no decoder plugin handles the encoding (not a bad file)."""
    message = str(error)
    return "missing dependencies" in message or ("does not support" in message and "plugins" in message)


def _group_value(ds: pydicom.Dataset, frame: int | None, sequence: str, keyword: str) -> Any:
    """An attribute that enhanced multi-frame files keep in functional group sequences.

    Looks in the per-frame group of ``frame``, then the shared group, then the top level.
    """
    for groups_name, index in (("PerFrameFunctionalGroupsSequence", frame),
                               ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_name)
        if not groups or index is None or index >= len(groups):
            continue
        inner = groups[index].get(sequence)
        if inner and keyword in inner[0]:
            return inner[0][keyword].value
    return ds.get(keyword)


def _to_modality_units(stored: np.ndarray, ds: pydicom.Dataset, frame: int | None) -> np.ndarray:
    """Stored values -> modality units (HU for CT) via the Modality LUT or slope/intercept."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(stored, ds).astype(np.float32)
    slope = _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    out = stored.astype(np.float64) * float(1.0 if slope is None else slope)
    out += float(0.0 if intercept is None else intercept)
    return out.astype(np.float32)


def _invert_monochrome1(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Mirror stored values within the range of their stored bits (MONOCHROME1: low = white).

    Inverting by bit range rather than by the image's own min/max maps a given stored value
    to the same output in every image of a device, so intensities stay comparable.
    """
    if stored.dtype.kind == "f":
        return stored.max() + stored.min() - stored
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2 ** bits - 1
    return (low + high) - stored.astype(np.int64)


def _pixel_spacing(ds: pydicom.Dataset, frame: int | None = None) -> tuple[float, float] | None:
    """(row spacing, column spacing) in mm; projection X-rays often only have ImagerPixelSpacing.

    Some archives write PixelSpacing 0\\0 for "unknown" (the NEMA chest radiograph RG1 does),
    so an invalid PixelSpacing falls back to ImagerPixelSpacing too.
    """
    spacing = _positive_finite(_group_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing"), 2)
    return spacing or _positive_finite(ds.get("ImagerPixelSpacing"), 2)


def _dicom_meta(ds: pydicom.Dataset) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "modality_tag": str(ds.get("Modality", "")),
    }
    if ds.get("PatientID"):
        meta["patient_id"] = str(ds.PatientID)
    return meta


def _frame_to_units(stored: np.ndarray, ds: pydicom.Dataset, frame: int | None) -> np.ndarray:
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        stored = _invert_monochrome1(stored, ds)
    return _to_modality_units(stored, ds, frame)


def _n_frames(ds: pydicom.Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _check_dicom_pixel_count(path: Path, ds: pydicom.Dataset, limits: ReadLimits,
                             n_slices: int = 1) -> None:
    """Refuse from the header a DICOM image whose decoded pixels would exceed the limits."""
    frames = _n_frames(ds) * n_slices
    pixels = int(ds.Rows) * int(ds.Columns)
    if frames > 1:
        _refuse_if_larger(path, "volume", frames, limits.max_frames, "frames")
        _refuse_if_larger(path, "volume", frames * pixels, limits.max_volume_voxels, "voxels")
    else:
        _refuse_if_larger(path, "image", pixels, limits.max_image_pixels, "pixels")


def _read_dicom_file(path: Path, limits: ReadLimits) -> Study:
    """One DICOM file: a 2D image, a volume when it has several frames, or an ECG waveform."""
    ds = _dcmread(path)
    try:
        if _is_ecg_waveform(ds):
            return _read_dicom_ecg(path, ds, limits)
        return _dicom_image_study(path, ds, limits)
    except _DICOM_ERRORS as exc:
        raise DataError(path, f"corrupt DICOM file: {exc}") from exc


def _dicom_image_study(path: Path, ds: pydicom.Dataset, limits: ReadLimits) -> Study:
    if "WaveformSequence" in ds and not any(k in ds for k in _PIXEL_DATA_KEYWORDS):
        raise DataError(path, f"DICOM waveform of SOP class '{_sop_class_name(ds)}' is not an "
                              "ECG; only 12-lead and general ECG waveforms are read")
    if any(k in ds for k in _PIXEL_DATA_KEYWORDS):
        _check_dicom_pixel_count(path, ds, limits)
    stored = _stored_pixels(path, ds)
    meta = _dicom_meta(ds)
    n_frames = _n_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 3:
        if n_frames > 1:
            raise DataError(path, f"multi-frame colour DICOM ({n_frames} frames) is not supported")
        meta.update(kind=SignalKind.IMAGE_2D, pixel_spacing=_pixel_spacing(ds))
        return Study(stored.astype(np.float32), meta)
    if samples != 1:
        raise DataError(path, f"unsupported SamplesPerPixel {samples}")
    if n_frames == 1:
        meta.update(kind=SignalKind.IMAGE_2D, pixel_spacing=_pixel_spacing(ds),
                    inverted=meta["photometric"] == "MONOCHROME1")
        return Study(_frame_to_units(stored, ds, None), meta)
    if stored.ndim != 3 or stored.shape[0] != n_frames:
        raise DataError(path, f"decoded pixels of shape {stored.shape} do not hold "
                              f"{n_frames} frames")
    positions = [_group_value(ds, i, "PlanePositionSequence", "ImagePositionPatient")
                 for i in range(n_frames)]
    orientation = _group_value(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    fallback_dz = _fallback_slice_spacing(ds, 0)
    order, dz = _slice_order_and_spacing(path, positions, orientation, list(range(n_frames)),
                                         fallback_dz)
    volume = np.empty(stored.shape, dtype=np.float32)
    for out_index, frame in enumerate(order):
        volume[out_index] = _frame_to_units(stored[frame], ds, frame)
    meta.update(kind=SignalKind.VOLUME_3D, spacing=_volume_spacing(dz, _pixel_spacing(ds, 0)))
    return Study(volume, meta)


def _read_dicom_series(folder: Path, limits: ReadLimits) -> Study:
    """A folder of single-frame DICOM slices of one series, stacked into a (D, H, W) volume.

    Headers are read first (without pixels) to check the series and its size, then the
    slices are decoded one at a time into the volume, so memory holds one slice beyond it.
    """
    try:
        files = _dicom_files_in(folder)
        if not files:
            # A PACS export's study folder holds one subfolder per series (Study/Series/IM0001):
            # their slices together are read like a folder mixing series, as its largest one.
            files = [f for sub in sorted(folder.iterdir()) if sub.is_dir() and not sub.name.startswith(".")
                     for f in _dicom_files_in(sub)]
    except OSError as exc:
        raise DataError(folder, f"cannot list the folder: {exc}") from exc
    if not files:
        raise DataError(folder, "folder holds no DICOM files, nor do its subfolders")
    _refuse_if_larger(folder, "DICOM series", len(files), limits.max_frames, "slice files")
    headers = [_dcmread(f, stop_before_pixels=True) for f in files]
    try:
        return _stack_series(folder, files, headers, limits)
    except _DICOM_ERRORS as exc:
        raise DataError(folder, f"corrupt DICOM series: {exc}") from exc


def _dicom_files_in(folder: Path) -> list[Path]:
    # DICOM exports often use bare names such as IM0001, and one folder may mix them with .dcm
    # files (a scout saved apart as scout.dcm): every DICOM file counts, whatever its name.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"
                  and (p.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(p)))


def _main_series(folder: Path, files: list[Path], headers: list[pydicom.Dataset]
                 ) -> tuple[list[Path], list[pydicom.Dataset], list[str]]:
    """The files of the folder's series with the most slices, and what was left out. PACS exports
    put the scout or localizer (1-3 slices) beside the axial series in one study folder; two
    series of equal size leave no main one and are refused."""
    groups: dict[str, list[int]] = {}
    for i, ds in enumerate(headers):
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(i)
    if len(groups) == 1:
        return files, headers, []
    ranked = sorted(groups.items(), key=lambda item: -len(item[1]))
    (_, keep), (_, runner_up) = ranked[0], ranked[1]
    if len(keep) == len(runner_up):
        raise DataError(folder, f"folder mixes {len(groups)} DICOM series and the largest two have "
                                f"{len(keep)} slice files each; put each series in its own folder and name that "
                                f"folder in the manifest")
    left_out = [f"{uid or '(no SeriesInstanceUID)'}: {len(indices)} file(s)" for uid, indices in ranked[1:]]
    return [files[i] for i in keep], [headers[i] for i in keep], left_out


def _stack_series(folder: Path, files: list[Path], headers: list[pydicom.Dataset],
                  limits: ReadLimits) -> Study:
    files, headers, left_out = _main_series(folder, files, headers)
    for f, ds in zip(files, headers):
        if _n_frames(ds) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DataError(f, "a slice folder must hold single-frame grayscale DICOM files")
    first = (int(headers[0].Rows), int(headers[0].Columns))
    for f, ds in zip(files, headers):
        shape = (int(ds.Rows), int(ds.Columns))
        if shape != first:
            raise DataError(folder, f"DICOM slices have different shapes: {files[0].name} is "
                                    f"{first}, {f.name} is {shape}")
    _check_dicom_pixel_count(folder, headers[0], limits, n_slices=len(files))
    positions = [ds.get("ImagePositionPatient") for ds in headers]
    orientation = headers[0].get("ImageOrientationPatient")
    instance_numbers = [_int_or(ds.get("InstanceNumber"), i) for i, ds in enumerate(headers)]
    order, dz = _slice_order_and_spacing(folder, positions, orientation, instance_numbers,
                                         _fallback_slice_spacing(headers[0], None),
                                         names=[f.name for f in files])
    volume = np.empty((len(files), *first), dtype=np.float32)
    for out_index, i in enumerate(order):
        ds = _dcmread(files[i])
        stored = _stored_pixels(files[i], ds)
        if stored.shape != first:
            raise DataError(files[i], f"decoded pixels of shape {stored.shape} do not match "
                                      f"the header's {first}")
        volume[out_index] = _frame_to_units(stored, ds, None)
    meta = _dicom_meta(headers[0])
    meta.update(kind=SignalKind.VOLUME_3D, n_files=len(files),
                spacing=_volume_spacing(dz, _pixel_spacing(headers[0])))
    if left_out:
        meta["other_series_left_out"] = left_out
    return Study(volume, meta)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _fallback_slice_spacing(ds: pydicom.Dataset, frame: int | None) -> float | None:
    """Slice spacing from the header, for when slice positions are missing."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _positive_finite([_group_value(ds, frame, "PixelMeasuresSequence", keyword)], 1)
        if value:
            return value[0]
    return None


def _finite_vector(value: Any, n: int) -> np.ndarray | None:
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (n,) and np.isfinite(vector).all() else None


def _slice_order_and_spacing(path: Path, positions: Sequence[Any], orientation: Any,
                             instance_numbers: list[int], fallback_dz: float | None,
                             names: list[str] | None = None) -> tuple[list[int], float | None]:
    """Order slices along the slice normal and measure the slice spacing.

    With ImagePositionPatient and ImageOrientationPatient on every slice, each position is
    projected on the normal (row direction x column direction), slices are sorted by that
    coordinate and the spacing is the mean step, (last - first) / (n - 1), which keeps the
    scan's physical extent. Otherwise (or when those values are malformed) slices go by
    InstanceNumber with the header's spacing.
    """
    orientation = None if orientation is None else _finite_vector(orientation, 6)
    points = [None if p is None else _finite_vector(p, 3) for p in positions]
    normal = None if orientation is None else np.cross(orientation[:3], orientation[3:6])
    if normal is None or np.linalg.norm(normal) < 1e-6 or any(p is None for p in points):
        order = sorted(range(len(instance_numbers)), key=lambda i: instance_numbers[i])
        return order, fallback_dz
    coords = np.array([np.dot(p, normal) for p in points])
    order = [int(i) for i in np.argsort(coords, kind="stable")]
    if len(order) == 1:
        return order, fallback_dz
    steps = np.diff(coords[order])
    if np.any(steps < 1e-4):
        i = int(np.argmin(steps))
        a, b = order[i], order[i + 1]
        which = f" ({names[a]}, {names[b]})" if names else f" (frames {a}, {b})"
        raise DataError(path, f"two slices at the same position{which}; duplicate slices or "
                              "more than one acquisition")
    return order, float((coords[order[-1]] - coords[order[0]]) / (len(order) - 1))


def _volume_spacing(dz: float | None, pixel_spacing: tuple[float, float] | None
                    ) -> tuple[float, float, float] | None:
    if dz is None or pixel_spacing is None:
        return None
    return (dz, pixel_spacing[0], pixel_spacing[1])


# --------------------------------------------------------------------------- DICOM ECG

_ECG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "general ECG",
}
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_CANONICAL_LEAD = {lead.upper(): lead for lead in STANDARD_LEADS}
# "Lead I (Einthoven)", "Lead aVR", "V1", or the MDC code value "MDC_ECG_LEAD_AVR".
_LEAD_LABEL = re.compile(r"^(?:MDC_ECG_LEAD_|lead\s*)?(III|II|I|aVR|aVL|aVF|V[1-6])(?![0-9a-z])",
                         re.IGNORECASE)


def _is_ecg_waveform(ds: pydicom.Dataset) -> bool:
    return str(ds.get("SOPClassUID", "")) in _ECG_SOP_CLASSES and "WaveformSequence" in ds


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    return getattr(uid, "name", None) or str(uid or "unknown")


def _read_dicom_ecg(path: Path, ds: pydicom.Dataset, limits: ReadLimits) -> Study:
    """A DICOM ECG as (leads, T) in mV, leads in the standard 12-lead order when all are there.

    The recorded rhythm (the first multiplex group whose WaveformOriginality is ORIGINAL) is
    read; derived groups such as the cart's median beats are not. pydicom applies each
    channel's sensitivity, correction factor and baseline; the sensitivity units (UCUM, e.g.
    "uV") then give the factor to mV. A file with all twelve standard leads returns exactly
    those twelve, in order; otherwise every channel is kept, standard leads first.
    """
    groups = ds.WaveformSequence
    if not groups:
        raise DataError(path, "DICOM ECG has an empty WaveformSequence")
    index = next((i for i, g in enumerate(groups)
                  if str(g.get("WaveformOriginality", "")).upper() == "ORIGINAL"), 0)
    group = groups[index]
    n_channels = int(group.NumberOfWaveformChannels)
    n_samples = int(group.NumberOfWaveformSamples)
    _refuse_if_larger(path, "signal", n_channels * n_samples, limits.max_signal_samples, "samples")
    fs = float(group.SamplingFrequency)
    if not (math.isfinite(fs) and fs > 0):
        raise DataError(path, f"DICOM ECG sampling frequency {fs} Hz is not a positive number")
    channels = list(group.get("ChannelDefinitionSequence") or [])
    if len(channels) != n_channels:
        raise DataError(path, f"DICOM ECG defines {len(channels)} channels but holds "
                              f"{n_channels}")
    signal = ds.waveform_array(index).T.astype(np.float32)  # (samples, channels) -> (leads, T)
    names, units = [], []
    for lead, channel in enumerate(channels):
        names.append(_channel_lead_name(channel, lead))
        unit = _channel_unit(channel)
        factor = _TO_MILLIVOLT.get(unit.lower())
        if factor is not None:  # leave unknown units as they are; meta says which they are
            signal[lead] *= factor
            unit = "mV"
        units.append(unit)
    order = _standard_lead_order(names)
    kept = set(order)
    meta = _dicom_meta(ds)
    meta.update(kind=SignalKind.SIGNAL_1D, fs=fs, lead_names=[names[i] for i in order],
                units=[units[i] for i in order], duration_s=n_samples / fs,
                source_format="dicom_ecg", multiplex_group=str(group.get("MultiplexGroupLabel", "")),
                dropped_channels=[names[i] for i in range(n_channels) if i not in kept])
    return Study(np.ascontiguousarray(signal[order]), meta)


def _channel_lead_name(channel: pydicom.Dataset, index: int) -> str:
    """The standard lead name a channel's source code or label gives, else that label as is."""
    source = (channel.get("ChannelSourceSequence") or [None])[0]
    labels = [str(source.get(k, "")) for k in ("CodeMeaning", "CodeValue")] if source else []
    labels.append(str(channel.get("ChannelLabel", "")))
    for label in labels:
        match = _LEAD_LABEL.match(label.strip())
        if match:
            return _CANONICAL_LEAD[match.group(1).upper()]
    return next((label.strip() for label in labels if label.strip()), f"channel {index + 1}")


def _channel_unit(channel: pydicom.Dataset) -> str:
    if "ChannelSensitivity" not in channel:
        return "raw"  # pydicom leaves the stored integers unscaled
    units = channel.get("ChannelSensitivityUnitsSequence")
    return str(units[0].get("CodeValue", "unknown")) if units else "unknown"


def _standard_lead_order(names: list[str]) -> list[int]:
    """Channel indices: the twelve standard leads in order, or all, standard ones first."""
    first_index: dict[str, int] = {}
    for i, name in enumerate(names):
        first_index.setdefault(name, i)
    if all(lead in first_index for lead in STANDARD_LEADS):
        return [first_index[lead] for lead in STANDARD_LEADS]
    standard = [first_index[lead] for lead in STANDARD_LEADS if lead in first_index]
    return standard + [i for i in range(len(names)) if i not in standard]


# --------------------------------------------------------------------------- NIfTI

_LPS = nib.orientations.axcodes2ornt(("L", "P", "S"))


def _read_nifti(path: Path, limits: ReadLimits) -> Study:
    """A NIfTI volume, reoriented to LPS and transposed to (z, y, x); nibabel applies scl_slope/inter."""
    try:
        image = nib.load(path)
        _check_nifti_size(path, image, limits)
        # A 4D file holding one volume, (x, y, z, 1), is common: drop trailing singleton axes.
        image = nib.squeeze_image(image)
        if len(image.shape) != 3:
            raise DataError(path, f"NIfTI holds a {len(image.shape)}D array of shape "
                                  f"{image.shape}; a 3D volume (x, y, z) is needed")
        to_lps = nib.orientations.ornt_transform(nib.io_orientation(image.affine), _LPS)
        image = image.as_reoriented(to_lps)
        data = image.get_fdata(dtype=np.float32)
    except _NIFTI_ERRORS as exc:
        raise DataError(path, f"unreadable NIfTI file: {exc}") from exc
    # nibabel itself replaces zero or NaN pixdims by 1 (with a warning).
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    meta = {"kind": SignalKind.VOLUME_3D, "spacing": (zooms[2], zooms[1], zooms[0]),
            "orientation": "LPS"}
    return Study(np.ascontiguousarray(data.transpose(2, 1, 0)), meta)


def _check_nifti_size(path: Path, image: Any, limits: ReadLimits) -> None:
    """Refuse from the header a volume above the limits, or an uncompressed file too short for it."""
    shape = tuple(int(n) for n in image.shape)
    if not all(n > 0 for n in shape):
        raise DataError(path, f"NIfTI header gives the array shape {shape}; every size must "
                              "be positive")
    _refuse_if_larger(path, "volume", math.prod(shape), limits.max_volume_voxels, "voxels")
    if path.name.lower().endswith(".nii"):
        needed = (int(image.dataobj.offset)
                  + math.prod(shape) * image.header.get_data_dtype().itemsize)
        size = path.stat().st_size
        if size < needed:
            raise DataError(path, f"truncated NIfTI file: {size:,} bytes, its header needs "
                                  f"{needed:,}")


# --------------------------------------------------------------------------- WFDB

def _read_wfdb(path: Path, limits: ReadLimits) -> Study:
    """A WFDB record (header + signal files) as (leads, T) in mV."""
    record_name = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    try:
        _check_wfdb_header(path, wfdb.rdheader(str(record_name)), limits)
        record = wfdb.rdrecord(str(record_name))
    except _WFDB_ERRORS as exc:
        raise DataError(path, f"unreadable WFDB record: {exc}") from exc
    if record.p_signal is None:
        raise DataError(path, "WFDB record has no physical signal")
    signal = record.p_signal.T.astype(np.float32)
    units = list(record.units or ["mV"] * signal.shape[0])
    for lead, unit in enumerate(units):
        factor = _TO_MILLIVOLT.get(str(unit).strip().lower())
        if factor is not None:  # leave unknown units as they are; meta says which they are
            signal[lead] *= factor
            units[lead] = "mV"
    fs = float(record.fs)
    meta = {"kind": SignalKind.SIGNAL_1D, "fs": fs, "units": units, "duration_s": signal.shape[1] / fs}
    if not record.sig_name:
        return Study(signal, {**meta, "lead_names": []})
    # As for DICOM: standard names ("AVR" -> "aVR"), the twelve leads in their usual order
    # whatever the file's, and other channels (respiration, a marker) after them or dropped.
    names = [_standard_lead_name(str(name), lead) for lead, name in enumerate(record.sig_name)]
    order = _standard_lead_order(names)
    meta.update(lead_names=[names[i] for i in order], units=[units[i] for i in order],
                dropped_channels=[names[i] for i in range(len(names)) if i not in set(order)])
    return Study(signal if order == list(range(len(names))) else np.ascontiguousarray(signal[order]), meta)


def _standard_lead_name(label: str, index: int) -> str:
    """The standard lead name ``label`` gives ("Lead II", "AVR", "MDC_ECG_LEAD_V1"), else the label."""
    match = _LEAD_LABEL.match(label.strip())
    return _CANONICAL_LEAD[match.group(1).upper()] if match else (label.strip() or f"channel {index + 1}")


def _check_wfdb_header(path: Path, header: Any, limits: ReadLimits) -> None:
    """Check a WFDB header before its signal is read: a usable rate and a bounded size.

    (wfdb's header grammar itself refuses signal file names with a folder in them.)
    """
    fs = float(header.fs) if header.fs is not None else float("nan")
    if not (math.isfinite(fs) and fs > 0):
        raise DataError(path, f"WFDB sampling frequency {header.fs} is not a positive number")
    if not header.n_sig:
        raise DataError(path, "WFDB header declares no signals")
    if header.sig_len:
        n_samples = int(header.n_sig) * int(header.sig_len)
    else:  # the length then comes from the file sizes, at least one byte per sample
        n_samples = sum(p.stat().st_size for p in {path.with_name(str(n)) for n in
                                                   (getattr(header, "file_name", None) or [])}
                        if p.is_file())
    _refuse_if_larger(path, "signal", n_samples, limits.max_signal_samples, "samples")


# --------------------------------------------------------------------------- images

_GRAY_MODES = {"L", "I", "F"}  # plus the "I;16*" family, matched by prefix


def _read_image(path: Path, limits: ReadLimits) -> Study:
    """PNG/JPEG/TIFF with Pillow: grayscale -> (H, W) in file units, colour -> (H, W, 3) 0..255.

    The size in the header is checked against ``limits`` before any pixel is decoded. Pillow's
    own decompression-bomb check runs first, in ``Image.open``: above twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` (179 megapixels by default) it refuses the file whatever
    the limits say; its warning below that is silenced, as the limits here decide.
    """
    try:
        with _ClampedReader(path) as f:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image_file = Image.open(f)
            with image_file as image:
                width, height = image.size
                _refuse_if_larger(path, "image", width * height, limits.max_image_pixels, "pixels")
                n_frames = getattr(image, "n_frames", 1)
                if n_frames > 1:
                    raise DataError(path, f"multi-page image ({n_frames} pages) is not "
                                          "supported; save one image per file (whole-slide "
                                          "images: m3bind.data.wsi)")
                image.load()
                image_format = image.format
                image = ImageOps.exif_transpose(image)  # fundus photos may be rotated via EXIF
        mode = image.mode
        if mode in ("1", "LA"):
            image = image.convert("L")
        elif not (mode in _GRAY_MODES or mode.startswith("I;16")):
            image = image.convert("RGB")  # RGBA, P, PA, CMYK, YCbCr, ...
        array = np.asarray(image).astype(np.float32)
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"image too large for Pillow's decompression-bomb guard "
                              f"(PIL.Image.MAX_IMAGE_PIXELS): {exc}") from exc
    except _IMAGE_ERRORS as exc:
        raise DataError(path, f"unreadable image file: {exc}") from exc
    return Study(array, {"kind": SignalKind.IMAGE_2D, "mode": mode,
                         "image_format": image_format})


# --------------------------------------------------------------------------- NumPy

def _read_npy(path: Path, limits: ReadLimits) -> Study:
    """A ``.npy`` array taken as it is (pickled object arrays and .npz archives are refused).

    The header is parsed first, so a header promising more elements than any limit allows,
    or than the file holds, is refused before memory is allocated for it.
    """
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise DataError(path, f"unsupported .npy format version {version}")
            if dtype.hasobject or dtype.kind not in "biuf":
                raise DataError(path, f"unsupported array dtype {dtype}; expected numbers")
            n_values = math.prod(shape)
            largest = max(limits.max_image_pixels * 3, limits.max_volume_voxels,
                          limits.max_signal_samples)
            _refuse_if_larger(path, "array", n_values, largest, "values")
            data_bytes = path.stat().st_size - f.tell()
            if data_bytes < n_values * dtype.itemsize:
                raise DataError(path, f"truncated .npy file: {data_bytes:,} data bytes for an "
                                      f"array of shape {shape} and dtype {dtype}")
            f.seek(0)
            array = np.lib.format.read_array(f, allow_pickle=False)
    except _NPY_ERRORS as exc:
        raise DataError(path, f"unreadable .npy file: {exc}") from exc
    return Study(array.astype(np.float32), {"kind": None})


_READERS = {
    "dicom": _read_dicom_file,
    "dicom_series": _read_dicom_series,
    "nifti": _read_nifti,
    "wfdb": _read_wfdb,
    "image": _read_image,
    "npy": _read_npy,
}
