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
* ECG: ``(leads, T)`` float32 in mV, with ``meta["fs"]``, ``lead_names``, ``units`` and
  ``duration_s``.

Every reader stores ``path``, ``source_format`` and ``kind`` (a :class:`SignalKind`, or
``None`` for a ``.npy`` array whose kind the caller did not state) in ``meta``. Every
problem raises :class:`~m3bind.errors.DataError` naming the file and what is wrong.
"""
from __future__ import annotations

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
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut

from m3bind.errors import DataError
from m3bind.signal_kinds import SignalKind

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_EXTENSIONS = (".dcm", ".nii", ".nii.gz", ".hea", ".dat", *IMAGE_EXTENSIONS, ".npy")
_SUPPORTED_TEXT = (", ".join(SUPPORTED_EXTENSIONS)
                   + ", a folder of DICOM slices, or a WFDB record name without extension")

# Exceptions the libraries raise for unreadable, corrupt or truncated files. pydicom in
# particular only fails when the pixels are decoded, with ValueError/AttributeError.
_DICOM_ERRORS = (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, KeyError,
                 AttributeError, TypeError, NotImplementedError, RuntimeError)
_NIFTI_ERRORS = (ImageFileError, OSError, EOFError, ValueError)
_WFDB_ERRORS = (OSError, EOFError, ValueError, IndexError, KeyError)

# Converts an ECG's physical units to mV (the convention of the arrays we return).
_TO_MILLIVOLT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


@dataclass
class Study:
    """One study as read from disk: the array (conventions in the module docstring) and its metadata."""

    array: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def read_study(path: str | Path, expect: SignalKind | None = None, *,
               expected_leads: int | None = None) -> Study:
    """Read the study at ``path`` (a file, a folder of DICOM slices or a WFDB record name).

    ``expect`` states which kind of signal the caller needs; a file holding another kind or
    an array of the wrong dimensionality raises :class:`DataError`. ``expected_leads``
    additionally checks the number of leads of a 1D signal.
    """
    path = Path(path)
    fmt = _detect_format(path)
    study = _READERS[fmt](path)
    study.meta["path"] = str(path)
    study.meta["source_format"] = fmt
    if study.array.size == 0:
        raise DataError(path, f"empty array (shape {study.array.shape})")
    _check_kind(path, study, expect)
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


# --------------------------------------------------------------------------- DICOM

def _dcmread(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except _DICOM_ERRORS as exc:
        raise DataError(path, f"unreadable DICOM file: {exc}") from exc


def _stored_pixels(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """Decoded stored pixel values; colour images come back as RGB (pydicom converts YBR)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise DataError(path, "DICOM file has no pixel data (truncated file, or not an image)")
    try:
        return ds.pixel_array
    except _DICOM_ERRORS as exc:
        raise DataError(path, f"corrupt or truncated DICOM pixel data: {exc}") from exc


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
    """(row spacing, column spacing) in mm; projection X-rays often only have ImagerPixelSpacing."""
    spacing = _group_value(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None:
        spacing = ds.get("ImagerPixelSpacing")
    return None if spacing is None else (float(spacing[0]), float(spacing[1]))


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


def _read_dicom_file(path: Path) -> Study:
    """One DICOM file: a 2D image, or a volume when it has several frames."""
    ds = _dcmread(path)
    stored = _stored_pixels(path, ds)
    meta = _dicom_meta(ds)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
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
    frames = [_frame_to_units(stored[i], ds, i) for i in range(n_frames)]
    positions = [_group_value(ds, i, "PlanePositionSequence", "ImagePositionPatient")
                 for i in range(n_frames)]
    orientation = _group_value(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    fallback_dz = _fallback_slice_spacing(ds, 0)
    order, dz = _slice_order_and_spacing(path, positions, orientation, list(range(n_frames)),
                                         fallback_dz)
    volume = np.stack([frames[i] for i in order])
    meta.update(kind=SignalKind.VOLUME_3D, spacing=_volume_spacing(dz, _pixel_spacing(ds, 0)))
    return Study(volume, meta)


def _read_dicom_series(folder: Path) -> Study:
    """A folder of single-frame DICOM slices of one series, stacked into a (D, H, W) volume."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not files:  # DICOM exports often use bare names such as IM0001
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != "DICOMDIR" and pydicom.misc.is_dicom(p))
    if not files:
        raise DataError(folder, "folder holds no DICOM files")
    datasets = [_dcmread(f) for f in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise DataError(folder, f"folder mixes {len(series)} DICOM series; put each series "
                                "in its own folder")
    slices = []
    for f, ds in zip(files, datasets):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DataError(f, "a slice folder must hold single-frame grayscale DICOM files")
        slices.append(_frame_to_units(_stored_pixels(f, ds), ds, None))
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        first = slices[0].shape
        odd_file, odd_shape = next((f, s.shape) for f, s in zip(files, slices) if s.shape != first)
        raise DataError(folder, f"DICOM slices have different shapes: {files[0].name} is "
                                f"{first}, {odd_file.name} is {odd_shape}")
    positions = [ds.get("ImagePositionPatient") for ds in datasets]
    orientation = datasets[0].get("ImageOrientationPatient")
    instance_numbers = [int(ds.get("InstanceNumber", i) or i) for i, ds in enumerate(datasets)]
    order, dz = _slice_order_and_spacing(folder, positions, orientation, instance_numbers,
                                         _fallback_slice_spacing(datasets[0], None),
                                         names=[f.name for f in files])
    meta = _dicom_meta(datasets[0])
    meta.update(kind=SignalKind.VOLUME_3D, n_files=len(files),
                spacing=_volume_spacing(dz, _pixel_spacing(datasets[0])))
    return Study(np.stack([slices[i] for i in order]), meta)


def _fallback_slice_spacing(ds: pydicom.Dataset, frame: int | None) -> float | None:
    """Slice spacing from the header, for when slice positions are missing."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _group_value(ds, frame, "PixelMeasuresSequence", keyword)
        if value:
            return float(value)
    return None


def _slice_order_and_spacing(path: Path, positions: Sequence[Any], orientation: Any,
                             instance_numbers: list[int], fallback_dz: float | None,
                             names: list[str] | None = None) -> tuple[list[int], float | None]:
    """Order slices along the slice normal and measure the slice spacing.

    With ImagePositionPatient and ImageOrientationPatient on every slice, each position is
    projected on the normal (row direction x column direction), slices are sorted by that
    coordinate and the spacing is the mean step, (last - first) / (n - 1), which keeps the
    scan's physical extent. Otherwise slices go by InstanceNumber with the header's spacing.
    """
    if orientation is None or any(p is None for p in positions):
        order = sorted(range(len(instance_numbers)), key=lambda i: instance_numbers[i])
        return order, fallback_dz
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float))
    coords = np.array([np.dot(np.asarray(p, float), normal) for p in positions])
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


# --------------------------------------------------------------------------- NIfTI

_LPS = nib.orientations.axcodes2ornt(("L", "P", "S"))


def _read_nifti(path: Path) -> Study:
    """A NIfTI volume, reoriented to LPS and transposed to (z, y, x); nibabel applies scl_slope/inter."""
    try:
        # A 4D file holding one volume, (x, y, z, 1), is common: drop trailing singleton axes.
        image = nib.squeeze_image(nib.load(path))
        if len(image.shape) != 3:
            raise DataError(path, f"NIfTI holds a {len(image.shape)}D array of shape "
                                  f"{image.shape}; a 3D volume (x, y, z) is needed")
        to_lps = nib.orientations.ornt_transform(nib.io_orientation(image.affine), _LPS)
        image = image.as_reoriented(to_lps)
        data = image.get_fdata(dtype=np.float32)
    except _NIFTI_ERRORS as exc:
        raise DataError(path, f"unreadable NIfTI file: {exc}") from exc
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    meta = {"kind": SignalKind.VOLUME_3D, "spacing": (zooms[2], zooms[1], zooms[0]),
            "orientation": "LPS"}
    return Study(np.ascontiguousarray(data.transpose(2, 1, 0)), meta)


# --------------------------------------------------------------------------- WFDB

def _read_wfdb(path: Path) -> Study:
    """A WFDB record (header + signal files) as (leads, T) in mV."""
    record_name = path.with_suffix("") if path.suffix.lower() in (".hea", ".dat") else path
    try:
        record = wfdb.rdrecord(str(record_name))
    except _WFDB_ERRORS as exc:
        raise DataError(path, f"unreadable WFDB record: {exc}") from exc
    if record.p_signal is None:
        raise DataError(path, "WFDB record has no physical signal")
    signal = record.p_signal.T.astype(np.float32)
    units = list(record.units or ["mV"] * signal.shape[0])
    for lead, unit in enumerate(units):
        factor = _TO_MILLIVOLT.get(unit.strip().lower())
        if factor is not None:  # leave unknown units as they are; meta says which they are
            signal[lead] *= factor
            units[lead] = "mV"
    fs = float(record.fs)
    meta = {"kind": SignalKind.SIGNAL_1D, "fs": fs, "lead_names": list(record.sig_name),
            "units": units, "duration_s": signal.shape[1] / fs}
    return Study(signal, meta)


# --------------------------------------------------------------------------- images

_GRAY_MODES = {"L", "I", "F"}  # plus the "I;16*" family, matched by prefix


def _read_image(path: Path) -> Study:
    """PNG/JPEG/TIFF with Pillow: grayscale -> (H, W) in file units, colour -> (H, W, 3) 0..255."""
    try:
        with Image.open(path) as image:
            n_frames = getattr(image, "n_frames", 1)
            if n_frames > 1:
                raise DataError(path, f"multi-page image ({n_frames} pages) is not supported; "
                                      "save one image per file")
            image.load()
            image_format = image.format
            image = ImageOps.exif_transpose(image)  # camera photos (fundus) may be rotated via EXIF
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"unreadable image file: {exc}") from exc
    mode = image.mode
    if mode in ("1", "LA"):
        image = image.convert("L")
    elif not (mode in _GRAY_MODES or mode.startswith("I;16")):
        image = image.convert("RGB")  # RGBA, P, PA, CMYK, YCbCr, ...
    array = np.asarray(image).astype(np.float32)
    return Study(array, {"kind": SignalKind.IMAGE_2D, "mode": mode,
                         "image_format": image_format})


# --------------------------------------------------------------------------- NumPy

def _read_npy(path: Path) -> Study:
    """A ``.npy`` array taken as it is (pickled object arrays are refused)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(path, f"unreadable .npy file: {exc}") from exc
    if array.dtype.kind not in "biuf":
        raise DataError(path, f"unsupported array dtype {array.dtype}; expected numbers")
    return Study(array.astype(np.float32), {"kind": None})


_READERS = {
    "dicom": _read_dicom_file,
    "dicom_series": _read_dicom_series,
    "nifti": _read_nifti,
    "wfdb": _read_wfdb,
    "image": _read_image,
    "npy": _read_npy,
}
