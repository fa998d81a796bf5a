"""Property-based fuzzing of every study reader (hypothesis).

Each case writes a file (or a folder) and reads it with :func:`read_study`; it must end in
a DataError naming the path, or a valid study (a finite float32 array of its kind's shape),
within the time and memory limits of :mod:`_fuzz`. Inputs: random bytes, truncated and
byte-mutated real files, valid headers with impossible sizes or values (NaN, inf, zero,
negative), empty files, wrong extensions and nested folders. docs/reliability.md lists the
classes and the case counts.
"""
from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import io
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import nibabel as nib
import numpy as np
import pydicom
import pydicom.encaps
import pytest
import tifffile
from hypothesis import example, given, reject
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless)

from _format_writers import synthetic_ecg, write_dicom, write_nifti, write_wfdb
from _fuzz import case_count, fuzz_settings, outcome, write_counts
from m3bind.data.readers import SUPPORTED_EXTENSIONS, Study, read_study
from m3bind.signal_kinds import SignalKind
from test_readers_dicom_ecg import _channel, _group, write_dicom_ecg

# Cases per reader: with the manifest fuzzing, about 40 s on two CPU cores (under 60 s).
EXAMPLES = {"dicom": 600, "dicom_series": 150, "dicom_ecg": 400, "nifti": 500, "wfdb": 500,
            "image": 500, "npy": 500, "paths": 250}


def _real(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path).read_bytes()


def _skimage(name: str) -> bytes:
    return (importlib.resources.files("skimage.data") / name).read_bytes()


def _written(write) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return Path(write(Path(folder))).read_bytes()


REAL_DICOM = {name: _real(name) for name in ("CT_small.dcm", "emri_small.dcm", "SC_rgb.dcm",
                                              "OBXXXX1A_rle.dcm", "MR_small_RLE.dcm")}
REAL_ECG = _real("waveform_ecg.dcm")
REAL_IMAGES = {"retina.jpg": _skimage("retina.jpg"),
               "microaneurysms.png": _skimage("microaneurysms.png"),
               "ihc.png": _skimage("ihc.png")}
WRITTEN_NIFTI = _written(lambda d: write_nifti(d / "v.nii", np.arange(60, dtype=np.int16).reshape(5, 4, 3),
                                               slope=2.0, intercept=-5.0))


def _valid_study(study: Study) -> None:
    assert isinstance(study, Study)
    array = study.array
    assert array.dtype == np.float32 and array.size > 0 and np.isfinite(array).all()
    kind = study.meta["kind"]
    if kind == SignalKind.IMAGE_2D:
        assert array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    elif kind == SignalKind.VOLUME_3D:
        assert array.ndim == 3
    elif kind == SignalKind.SIGNAL_1D:
        assert array.ndim == 2
        if study.meta["source_format"] != "npy":  # a .npy array states no sampling rate
            assert np.isfinite(study.meta["fs"]) and study.meta["fs"] > 0
    else:
        assert kind is None and array.ndim in (2, 3)


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def _read_case(reader: str, input_class: str, path: Path, **kwargs) -> str:
    return outcome(reader, input_class, str(path), lambda: read_study(path, **kwargs), _valid_study)


def labeled(label: str, strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Tag each drawn input with its input class, for the case counts per class."""
    return strategy.map(lambda value: (label, value))


def _check_count(reader: str) -> None:
    # Hypothesis runs max_examples cases unless it rejects many (the writer refusing values)
    assert case_count(reader) >= EXAMPLES[reader] * 0.8, case_count(reader)


# --------------------------------------------------------------------------- shared strategies

def truncated(data: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, len(data)).map(lambda n: data[:n])


def mutated(data: bytes, head: int = 2048) -> st.SearchStrategy[bytes]:
    """``data`` with 1-8 bytes overwritten, mostly in the first ``head`` bytes (the header)."""
    position = st.one_of(st.integers(0, min(head, len(data) - 1)), st.integers(0, len(data) - 1))

    def apply(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for at, value in edits:
            out[at] = value
        return bytes(out)
    return st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=8).map(apply)


odd_floats = st.one_of(st.sampled_from([0.0, -1.0, float("nan"), float("inf"), float("-inf"),
                                        1e300, -1e-300, 1.0, 0.5, 2.0, -1024.0]),
                       st.floats(allow_nan=True, allow_infinity=True, width=32))
odd_ints = st.one_of(st.sampled_from([0, 1, 2, 3, 255, 256, 65535, 2 ** 31 - 1, -1]),
                     st.integers(-2 ** 31, 2 ** 31 - 1))


# --------------------------------------------------------------------------- DICOM images

@st.composite
def dicom_header_cases(draw) -> tuple[str, dict]:
    """A DICOM image whose header values are drawn freely (sizes, bit depths, rescale, geometry)."""
    # Sensible values are drawn more often than odd ones, so cases get past the first check.
    frames = draw(st.sampled_from([None, None, 1, 2, 3, 0, 10 ** 5, 10 ** 9]))
    rows = draw(st.sampled_from([1, 2, 4, 7, 0, 65535]))
    columns = draw(st.sampled_from([1, 3, 5, 0, 65535]))
    bits = draw(st.sampled_from([16, 16, 16, 8, 0, 1, 12, 32, 64]))
    samples = draw(st.sampled_from([1, 1, 1, 3, 0, 2, 4]))
    overrides = {
        "Rows": rows, "Columns": columns,
        "BitsAllocated": bits,
        "BitsStored": draw(st.one_of(st.just(bits), st.integers(0, 64))),
        "PixelRepresentation": draw(st.sampled_from([0, 1, 2])),
        "SamplesPerPixel": samples,
        "PhotometricInterpretation": draw(st.sampled_from(
            ["MONOCHROME2", "RGB"] if samples == 3 and draw(st.booleans()) else
            ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "BOGUS"])),
        "RescaleSlope": draw(odd_floats), "RescaleIntercept": draw(odd_floats),
        "PixelSpacing": draw(st.lists(odd_floats, max_size=3)),
        "ImagePositionPatient": draw(st.lists(odd_floats, max_size=4)),
        "ImageOrientationPatient": draw(st.lists(odd_floats, max_size=7)),
        "SliceThickness": draw(odd_floats),
    }
    if frames is not None:
        overrides["NumberOfFrames"] = frames
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                   ExplicitVRBigEndian, RLELossless, JPEGBaseline8Bit,
                                   DeflatedExplicitVRLittleEndian]))
    n_bytes = draw(st.sampled_from(["exact", "exact", "short", "random"]))
    expected = -(-rows * columns * max(frames or 1, 1) * max(samples, 1) * bits // 8)
    expected += expected % 2
    if n_bytes == "exact" and expected <= 2 ** 20:
        pixel_data = bytes(draw(st.binary(min_size=min(expected, 64), max_size=64))) \
            .ljust(expected, b"\x07")
    else:
        pixel_data = draw(st.binary(max_size=512))
    overrides["PixelData"] = pixel_data
    if draw(st.booleans()):
        overrides["ModalityLUTSequence"] = [_modality_lut(draw)]
    return syntax, overrides


def _modality_lut(draw) -> Dataset:
    lut = Dataset()
    lut.LUTDescriptor = [draw(st.integers(0, 70000)) % 65536, draw(odd_ints) % 65536,
                         draw(st.sampled_from([0, 8, 16, 17]))]
    lut.ModalityLUTType = "HU"
    lut.LUTData = draw(st.binary(max_size=64))
    return lut


def _write_dicom_with(path: Path, syntax: str, overrides: dict) -> Path:
    write_dicom(path, np.zeros((2, 3), np.uint16))
    ds = pydicom.dcmread(path)
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    ds.file_meta.TransferSyntaxUID = syntax
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if syntax.is_encapsulated:
                ds["PixelData"].VR = "OB"
                ds["PixelData"].is_undefined_length = True
                ds.PixelData = pydicom.encaps.encapsulate([overrides["PixelData"]])
            ds.save_as(path, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - pydicom's writer refused the values: no reader case
            reject()
    return path


def _huge_length_element(data: bytes) -> bytes:
    """A private OB element whose length field claims 0xFFFFFFF0 bytes (found by this fuzzing:
    pydicom's read(length) made Python allocate 4 GiB for a 40 kB file)."""
    return data + b"\x09\x00\x10\x00OB\x00\x00" + struct.pack("<I", 0xFFFFFFF0) + b"abc"


dicom_cases = st.one_of(
    labeled("random bytes", st.binary(max_size=4096)),
    labeled("random bytes after a DICM preamble",
            st.binary(max_size=4096).map(lambda b: b"\0" * 128 + b"DICM" + b)),
    labeled("empty file", st.just(b"")),
    *[labeled("truncated real file", truncated(data)) for data in REAL_DICOM.values()],
    *[labeled("byte-mutated real file", mutated(data)) for data in REAL_DICOM.values()],
    labeled("element length beyond the file", st.sampled_from(list(REAL_DICOM.values()))
            .map(_huge_length_element)),
)


@fuzz_settings(EXAMPLES["dicom"])
@given(case=st.one_of(dicom_cases,
                      labeled("header values drawn freely (sizes, bits, rescale, geometry)",
                              dicom_header_cases())),
       name=st.sampled_from(["study.dcm", "IM0001"]))
@example(case=("element length beyond the file", _huge_length_element(REAL_DICOM["CT_small.dcm"])),
         name="study.dcm")
def _fuzz_dicom(case, name):
    label, payload = case
    with _folder() as folder:
        path = folder / name
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            _write_dicom_with(path, *payload)
        _read_case("dicom", label, path)


def test_fuzz_dicom():
    _fuzz_dicom()
    _check_count("dicom")


# --------------------------------------------------------------------------- DICOM series folders

slice_entry = st.one_of(
    labeled("slice", st.tuples(st.sampled_from([(4, 5), (4, 5), (5, 4)]),
                               st.lists(odd_floats, min_size=0, max_size=3),
                               st.sampled_from(["1.2.3", "1.2.3", "9.9"]), odd_ints)),
    labeled("bytes", st.binary(max_size=300)),
    labeled("subfolder", st.just(b"")),
    labeled("multiframe", st.just(b"")),
)


@fuzz_settings(EXAMPLES["dicom_series"])
@given(entries=st.lists(slice_entry, max_size=6), bare_names=st.booleans())
def _fuzz_dicom_series(entries, bare_names):
    with _folder() as root:
        folder = root / "series"
        folder.mkdir()
        for i, (kind, value) in enumerate(entries):
            name = f"IM{i:04d}" if bare_names else f"s{i}.dcm"
            if kind == "slice":
                shape, position, series, instance = value
                write_dicom(folder / name, np.full(shape, i, np.uint16), series_uid=series,
                            position=position if len(position) == 3 else None,
                            instance_number=instance % 2 ** 31)
            elif kind == "bytes":
                (folder / name).write_bytes(value)
            elif kind == "subfolder":  # a nested folder, even one named like a slice
                (folder / name).mkdir()
                write_dicom(folder / name / "inner.dcm", np.zeros((4, 5), np.uint16))
            else:
                write_dicom(folder / name, np.zeros((2, 4, 5), np.uint16))
        kinds = {kind for kind, _ in entries}
        label = ("empty folder" if not entries else "clean slices" if kinds == {"slice"}
                 else "slices mixed with " + ", ".join(sorted(kinds - {"slice"})))
        _read_case("dicom_series", label, folder)


def test_fuzz_dicom_series():
    _fuzz_dicom_series()
    _check_count("dicom_series")


# --------------------------------------------------------------------------- DICOM ECG

@st.composite
def ecg_header_cases(draw) -> list[Dataset]:
    # Sensible values are drawn more often than odd ones, so cases get past the first check.
    n_channels = draw(st.sampled_from([12, 12, 3, 1, 13, 0]))
    n_samples = draw(st.sampled_from([500, 500, 10, 1, 0]))
    channels = []
    for _ in range(draw(st.sampled_from([n_channels, n_channels, max(0, n_channels - 1)]))):
        channels.append(_channel(
            meaning=draw(st.sampled_from(["Lead I", "Lead II", "Lead aVR", "Lead V6", "Lead V7",
                                          "", "Resp", "lead iii (Einthoven)"])),
            sensitivity=draw(st.one_of(st.just(1.25), st.none(), odd_floats)),
            unit=draw(st.sampled_from(["uV", "uV", "mV", "V", "mmHg", None])),
            correction=draw(st.one_of(st.just(1.0), odd_floats)),
            baseline=draw(st.one_of(st.just(0.0), odd_floats))))
    raw = np.frombuffer(draw(st.binary(min_size=2 * n_samples * n_channels,
                                       max_size=2 * n_samples * n_channels)),
                        dtype="<i2").reshape(n_samples, n_channels)
    group = _group(raw, channels, fs=1.0)
    group.SamplingFrequency = draw(st.one_of(st.just(500.0), odd_floats))
    group.NumberOfWaveformSamples = draw(st.sampled_from([n_samples] * 3 + [n_samples + 7, 10 ** 9]))
    group.NumberOfWaveformChannels = draw(st.sampled_from([n_channels] * 3 + [n_channels + 1, 0]))
    group.WaveformBitsAllocated = draw(st.sampled_from([16, 16, 16, 8, 32, 64, 12]))
    group.WaveformSampleInterpretation = draw(st.sampled_from(["SS", "SS", "SS", "US", "SB", "MB", "XX"]))
    group.WaveformOriginality = draw(st.sampled_from(["ORIGINAL", "DERIVED", ""]))
    if draw(st.integers(0, 3)) == 0:
        group.WaveformData = draw(st.binary(max_size=256))
    return [group] * draw(st.sampled_from([1, 1, 1, 2, 0]))


@fuzz_settings(EXAMPLES["dicom_ecg"])
@given(case=st.one_of(
    labeled("waveform header values drawn freely (channels, samples, rate, bits, "
            "sensitivity, units)", ecg_header_cases()),
    labeled("truncated real file", truncated(REAL_ECG)),
    labeled("byte-mutated real file", mutated(REAL_ECG, head=4096))))
def _fuzz_dicom_ecg(case):
    label, payload = case
    with _folder() as folder:
        path = folder / "ecg.dcm"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    write_dicom_ecg(path, payload)
                except Exception:  # noqa: BLE001 - pydicom's writer refused the values
                    reject()
        _read_case("dicom_ecg", label, path)


def test_fuzz_dicom_ecg():
    _fuzz_dicom_ecg()
    _check_count("dicom_ecg")


# --------------------------------------------------------------------------- NIfTI

@st.composite
def nifti_header_cases(draw) -> bytes:
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(WRITTEN_NIFTI))
    n_dims = draw(st.integers(0, 8))
    dims = [draw(st.sampled_from([-1, 0, 1, 2, 3, 5, 32767])) for _ in range(7)]
    header["dim"] = [n_dims, *dims]
    header["datatype"] = draw(st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024,
                                               1280, 2304, 1, 0, 9999]))
    header["bitpix"] = draw(st.sampled_from([0, 8, 16, 32, 64, 128]))
    header["vox_offset"] = draw(st.sampled_from([0.0, 352.0, 353.0, 1e9, float("nan"), -5.0]))
    header["pixdim"] = [1.0, *[draw(odd_floats) for _ in range(7)]]
    header["scl_slope"] = draw(odd_floats)
    header["scl_inter"] = draw(odd_floats)
    header["qform_code"] = draw(st.sampled_from([0, 1, 2, 5]))
    header["sform_code"] = draw(st.sampled_from([0, 1, 2, 5]))
    header["srow_x"] = [draw(odd_floats) for _ in range(4)]
    header["quatern_b"] = draw(odd_floats)
    data = draw(st.one_of(st.binary(max_size=1024), st.just(WRITTEN_NIFTI[352:])))
    return header.binaryblock + b"\0" * 4 + data


nifti_bytes = st.one_of(
    labeled("random bytes", st.binary(max_size=2048)),
    labeled("empty file", st.just(b"")),
    labeled("truncated valid file", truncated(WRITTEN_NIFTI)),
    labeled("byte-mutated header", mutated(WRITTEN_NIFTI, head=352)),
    labeled("header values drawn freely (dims, datatype, offset, pixdim, scaling, affine)",
            nifti_header_cases()),
)


def _nifti_with_dims(dims: list[int]) -> bytes:
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(WRITTEN_NIFTI))
    header["dim"] = [len(dims), *dims, *[1] * (7 - len(dims))]
    return header.binaryblock + WRITTEN_NIFTI[348:]


@fuzz_settings(EXAMPLES["nifti"])
@given(case=nifti_bytes, compression=st.sampled_from(["none", "gzip", "gzip truncated"]),
       cut=st.integers(0, 10 ** 6))
# a negative size made numpy's memory map raise OverflowError (found by this fuzzing)
@example(case=("byte-mutated header", _nifti_with_dims([5, -32763, 3])), compression="none", cut=0)
def _fuzz_nifti(case, compression, cut):
    label, data = case
    with _folder() as folder:
        if compression == "none":
            path = folder / "scan.nii"
            path.write_bytes(data)
        else:
            path = folder / "scan.nii.gz"
            packed = gzip.compress(data)
            path.write_bytes(packed[:cut % (len(packed) + 1)] if compression == "gzip truncated"
                             else packed)
        _read_case("nifti", label if compression == "none" else f"{label}, {compression}", path)


def test_fuzz_nifti():
    _fuzz_nifti()
    _check_count("nifti")


# --------------------------------------------------------------------------- WFDB

digits = st.one_of(st.sampled_from(["", "0", "1", "12", "250", "1000000000000"]),
                   st.integers(0, 10 ** 6).map(str))


@st.composite
def wfdb_header_text(draw) -> str:
    n_sig = draw(st.integers(0, 4))
    lines = [f"rec {draw(st.sampled_from([str(n_sig), '0', '99']))} "
             f"{draw(st.sampled_from(['0', '250', '500.5', '1e3', '', '0.0001']))} {draw(digits)}"]
    for _ in range(n_sig):
        fmt = draw(st.sampled_from(["8", "16", "24", "32", "61", "80", "160", "212", "310",
                                    "311", "508", "0", "999"]))
        gain = draw(st.sampled_from(["200", "0", "-5", "1e-30", "1000.5", ""]))
        baseline = draw(st.sampled_from(["", "(0)", "(-32768)", "(99999)"]))
        units = draw(st.sampled_from(["/mV", "/uV", "/V", "/mmHg", ""]))
        extra = draw(st.sampled_from(["", "x2", "+7", ":3"]))
        name = draw(st.sampled_from(["rec.dat", "rec.dat", "other.dat", "~"]))
        lines.append(f"{name} {fmt}{extra} {gain}{baseline}{units} {draw(digits)} 0 0 0 0 "
                     f"{draw(st.sampled_from(['I', 'II', 'V1', '']))}")
    return "\n".join(lines) + "\n"


def _valid_record() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory() as name:
        header = write_wfdb(Path(name), "rec", synthetic_ecg(200, 100.0, 3), fs=100.0)
        return header.read_bytes(), header.with_suffix(".dat").read_bytes()


VALID_HEADER, VALID_DAT = _valid_record()

wfdb_cases = st.one_of(
    labeled("header fields drawn freely, random signal bytes",
            st.tuples(wfdb_header_text().map(str.encode), st.binary(max_size=2048))),
    labeled("header fields drawn freely, valid signal file",
            st.tuples(wfdb_header_text().map(str.encode), st.just(VALID_DAT))),
    labeled("random bytes (header and signal)",
            st.tuples(st.binary(max_size=512), st.binary(max_size=512))),
    labeled("truncated header", st.tuples(truncated(VALID_HEADER), st.just(VALID_DAT))),
    labeled("truncated signal file", st.tuples(st.just(VALID_HEADER), truncated(VALID_DAT))),
    labeled("byte-mutated header and signal",
            st.tuples(mutated(VALID_HEADER), mutated(VALID_DAT))),
    labeled("empty files", st.just((b"", b""))),
)


@fuzz_settings(EXAMPLES["wfdb"])
@given(case=wfdb_cases, target=st.sampled_from(["rec.hea", "rec.dat", "rec"]))
def _fuzz_wfdb(case, target):
    label, (header, dat) = case
    with _folder() as folder:
        (folder / "rec.hea").write_bytes(header)
        (folder / "rec.dat").write_bytes(dat)
        _read_case("wfdb", label, folder / target)


def test_fuzz_wfdb():
    _fuzz_wfdb()
    _check_count("wfdb")


# --------------------------------------------------------------------------- PNG / JPEG / TIFF

def _png(width: int, height: int, bit_depth: int, colour: int, interlace: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


png_headers = st.builds(
    _png,
    st.sampled_from([0, 1, 7, 64, 3000, 2 ** 31 - 1]), st.sampled_from([0, 1, 5, 64, 3000, 2 ** 31 - 1]),
    st.sampled_from([1, 2, 4, 8, 16, 3]), st.sampled_from([0, 2, 3, 4, 6, 5]), st.sampled_from([0, 1]),
    st.one_of(st.binary(max_size=200), st.binary(max_size=64).map(zlib.compress),
              st.just(zlib.compress(b"\0" * (3000 * 3001)))))  # a zlib bomb: 9 MB from 9 kB


@st.composite
def tiff_cases(draw) -> bytes:
    shape = draw(st.sampled_from([(3, 4), (5, 4, 3), (2, 3, 4), (4, 3, 4), (1, 1), (6, 5, 2)]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int32, np.float16, np.float32,
                                  np.float64, np.complex64, np.bool_, np.int8]))
    array = np.frombuffer(draw(st.binary(min_size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                                         max_size=int(np.prod(shape)) * np.dtype(dtype).itemsize)),
                          dtype=dtype).reshape(shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tifffile.imwrite(buffer, array, compression=draw(st.sampled_from([None, "zlib", "packbits"])))
        except Exception:  # noqa: BLE001 - tifffile cannot write this array: no reader case
            reject()
    return buffer.getvalue()


def _image_bytes(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


SMALL_TIFF = _image_bytes(np.arange(60, dtype=np.uint8).reshape(6, 10), "TIFF")
PNG_16BIT = _image_bytes(np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000, "PNG")
TWO_PAGE_TIFF = _written(lambda d: tifffile.imwrite(d / "p.tif", np.zeros((2, 4, 4), np.uint8),
                                                    photometric="minisblack") or d / "p.tif")

image_cases = st.one_of(
    labeled("random bytes", st.binary(max_size=2048)),
    labeled("empty file", st.just(b"")),
    labeled("multi-page TIFF", st.just(TWO_PAGE_TIFF)),
    labeled("PNG header drawn freely (size up to 2^31, bit depth, colour type, zlib bomb)",
            png_headers),
    labeled("TIFF of drawn shape and dtype (float16, complex, bool, int32, ...)", tiff_cases()),
    *[labeled("truncated real file", truncated(data))
      for data in (*REAL_IMAGES.values(), SMALL_TIFF, PNG_16BIT)],
    *[labeled("byte-mutated real file", mutated(data, head=512))
      for data in (*REAL_IMAGES.values(), SMALL_TIFF, PNG_16BIT)],
)


# A 16-bit PNG whose IDAT length byte was mutated to claim 3.2 GB: Pillow's read(length)
# allocated it (found by this fuzzing; reads are now clamped to the bytes left).
HUGE_IDAT_PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\n\x00\x00\x00\x06\x10\x00\x00"
                 b"\x00\x00\x8f\x0b\x8cY\xc1\x00\x00/IDATx\x9ccd``~\xc1\x82\x0e\xd5\x05\x98\x05X~"
                 b"\xa0Au\x01\x16\x01\xe6\x17\x98\x82?0\x84\xd5\x05X~\xb0\xfc@3\x02\"\x88\xaa\x16"
                 b"\x00\xc1\xcc1\x03\xd4\xbeF\xe2\x00\x00\x00\x00IEND\xaeB`\x82")


@fuzz_settings(EXAMPLES["image"])
@given(case=image_cases, suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".tif", ".tiff"]))
@example(case=("byte-mutated real file", HUGE_IDAT_PNG), suffix=".png")
def _fuzz_image(case, suffix):
    label, data = case
    with _folder() as folder:
        path = folder / f"image{suffix}"
        path.write_bytes(data)
        _read_case("image", label, path)


def test_fuzz_image():
    _fuzz_image()
    _check_count("image")


# --------------------------------------------------------------------------- NumPy

@st.composite
def npy_header_cases(draw) -> bytes:
    descr = draw(st.sampled_from(["<f4", ">f8", "<i2", "|u1", "|b1", "<f2", "<c8", "|O", "|S5",
                                  "<M8[s]", "|V4", [("a", "<f4")], "<U3"]))
    shape = tuple(draw(st.lists(st.sampled_from([0, 1, 2, 3, 12, 10 ** 6, 2 ** 40]), max_size=4)))
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": draw(st.booleans()), "shape": shape}
    write = draw(st.sampled_from([np.lib.format.write_array_header_1_0,
                                  np.lib.format.write_array_header_2_0]))
    write(buffer, header)
    values = draw(st.one_of(
        st.binary(max_size=256),
        st.lists(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -float("inf")]),
                 max_size=64).map(lambda v: np.asarray(v, "<f4").tobytes())))
    return buffer.getvalue() + values


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


VALID_NPY = _npy(np.arange(24, dtype=np.float32).reshape(2, 3, 4))

npy_cases = st.one_of(
    labeled("random bytes", st.binary(max_size=1024)),
    labeled("empty file", st.just(b"")),
    labeled("header drawn freely (dtype, shape up to 2^40, order), NaN/inf or random data",
            npy_header_cases()),
    labeled("truncated valid file", truncated(VALID_NPY)),
    labeled("byte-mutated header", mutated(VALID_NPY, head=128)),
    labeled("pickled object array", st.just(_npy(np.array([{"a": 1}], dtype=object)))),
    labeled(".npz archive named .npy",
            st.just(_written(lambda d: np.savez(d / "a.npz", a=np.zeros(3)) or d / "a.npz"))),
    labeled("all-NaN array", st.just(_npy(np.full((3, 4), np.nan, np.float32)))),
)
# Headers numpy cannot parse directly are re-read as Python 2 source (tokenize, ast); these
# raised SyntaxError and tokenize.TokenError out of the reader before it caught them.
UNTOKENIZABLE_HEADERS = [b"\x93NUMPY\x01\x00\x06\x00\x00\x00\x00'''",  # TokenError
                         b"\x93NUMPY\x01\x00v\x00   ' ''' \n  :" + b" " * 56  # IndentationError
                         + b"''''(),,,,,2344::<F\\_\x01\x01\x01c" + b"\x01" * 8 + b"hlnooprrrrrssst}"]


@fuzz_settings(EXAMPLES["npy"])
@given(case=npy_cases, expect=st.sampled_from([None, "image2d", "volume3d", "signal1d"]))
@example(case=("header drawn freely (dtype, shape up to 2^40, order), NaN/inf or random data",
               UNTOKENIZABLE_HEADERS[0]), expect=None)
@example(case=("header drawn freely (dtype, shape up to 2^40, order), NaN/inf or random data",
               UNTOKENIZABLE_HEADERS[1]), expect=None)
def _fuzz_npy(case, expect):
    label, data = case
    with _folder() as folder:
        path = folder / "array.npy"
        path.write_bytes(data)
        _read_case("npy", label, path, expect=expect)


def test_fuzz_npy():
    _fuzz_npy()
    _check_count("npy")


# --------------------------------------------------------------------------- wrong names, folders

ANY_FILE = st.sampled_from([*REAL_DICOM.values(), REAL_ECG, *REAL_IMAGES.values(), WRITTEN_NIFTI,
                            VALID_NPY, VALID_HEADER, b"", b"\0" * 10])


@fuzz_settings(EXAMPLES["paths"])
@given(data=ANY_FILE,
       name=st.one_of(labeled("any file under any supported extension",
                              st.sampled_from([f"x{ext}" for ext in SUPPORTED_EXTENSIONS])),
                      labeled("odd names (no or unknown extension, upper case, 300 characters, "
                              "NUL byte, nested)",
                              st.sampled_from(["x", "x.txt", "x.DCM", "x.NII.GZ", ".hidden",
                                               "x.dcm.bak", "a" * 300 + ".dcm", "x\0y.dcm",
                                               "nested/x.png"]))),
       as_folder=st.booleans())
def _fuzz_paths(data, name, as_folder):
    label, name = name
    if as_folder:
        label = "a folder with that name, the file nested one level further down"
    with _folder() as folder:
        path = folder / name
        if "\0" not in name and len(name) < 255:
            path.parent.mkdir(parents=True, exist_ok=True)
            if as_folder:  # a folder wearing a file's name, holding the file one level down
                path.mkdir()
                (path / "inner").mkdir()
                (path / "inner" / "x.dcm").write_bytes(data)
            else:
                path.write_bytes(data)
        _read_case("paths", label, path)


def test_fuzz_wrong_extensions_and_folders():
    _fuzz_paths()
    _check_count("paths")


@pytest.fixture(scope="module", autouse=True)
def _write_case_counts():
    yield
    if os.environ.get("M3BIND_FUZZ_COUNTS"):
        write_counts(os.environ["M3BIND_FUZZ_COUNTS"])
