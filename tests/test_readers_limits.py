"""Size guards (ReadLimits) and header values that are present but meaningless."""
from __future__ import annotations

import struct
import zlib

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from _format_writers import synthetic_ecg, write_dicom, write_nifti, write_wfdb
from m3bind.data.limits import ReadLimits
from m3bind.data.readers import DEFAULT_LIMITS, read_study
from m3bind.errors import DataError


def _refused(path, *fragments, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        read_study(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_default_limits_are_finite_and_generous():
    assert DEFAULT_LIMITS.max_image_pixels >= 50_000_000        # a 7000 x 7000 radiograph
    assert DEFAULT_LIMITS.max_volume_voxels >= 1000 * 512 * 512  # a thin-slice chest CT
    assert DEFAULT_LIMITS.max_signal_samples >= 12 * 5000 * 60   # a minute of 12-lead at 5 kHz
    with pytest.raises(ValueError):
        ReadLimits(max_frames=0)
    with pytest.raises(ValueError):
        ReadLimits(max_pixels=10)  # a typo is an error, not a silently ignored setting


# --------------------------------------------------------------------------- each reader

def test_dicom_image_limit(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((4, 5), np.uint16))
    _refused(path, "image too large: 20 pixels", "limit of 19",
             limits=ReadLimits(max_image_pixels=19))
    assert read_study(path, limits=ReadLimits(max_image_pixels=20)).array.shape == (4, 5)


def test_dicom_multiframe_frame_and_voxel_limits(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", np.zeros((6, 4, 5), np.uint16),
                       extra={"SliceThickness": 2.0})
    _refused(path, "6 frames", limits=ReadLimits(max_frames=5))
    _refused(path, "120 voxels", limits=ReadLimits(max_volume_voxels=119))
    assert read_study(path, limits=ReadLimits(max_frames=6, max_volume_voxels=120)).array.shape \
        == (6, 4, 5)


def test_dicom_header_promising_a_huge_image_is_refused_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((4, 5), np.uint16),
                       extra={"NumberOfFrames": 50_000})
    _refused(path, "50,000 frames", "limit of 10,000")


def test_dicom_folder_slice_count_and_voxel_limits(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for z in range(3):
        write_dicom(folder / f"s{z}.dcm", np.full((4, 5), z, np.uint16), series_uid="1.2.3",
                    position=(0.0, 0.0, float(z)))
    _refused(folder, "3 slice files", limits=ReadLimits(max_frames=2))
    _refused(folder, "60 voxels", limits=ReadLimits(max_volume_voxels=59))
    assert read_study(folder, limits=ReadLimits(max_volume_voxels=60)).array.shape == (3, 4, 5)


def test_nifti_voxel_limit_and_header_bigger_than_the_file(tmp_path):
    path = write_nifti(tmp_path / "v.nii", np.zeros((5, 4, 3), np.float32))
    _refused(path, "60 voxels", limits=ReadLimits(max_volume_voxels=59))
    # A header claiming 4000^3 voxels over 240 bytes of data: refused from the header alone.
    image = nib.load(path)
    header = image.header.copy()
    header["vox_offset"] = 352
    header.set_data_shape((4000, 4000, 4000))
    big = tmp_path / "big.nii"
    big.write_bytes(header.binaryblock + b"\0" * 4 + np.zeros(60, np.float32).tobytes())
    _refused(big, "64,000,000,000 voxels")
    header.set_data_shape((50, 40, 30))
    short = tmp_path / "short.nii"
    short.write_bytes(header.binaryblock + b"\0" * 4 + np.zeros(60, np.float32).tobytes())
    _refused(short, "truncated NIfTI file", "its header needs 240,352")


def test_wfdb_sample_limit(tmp_path):
    header = write_wfdb(tmp_path, "rec", synthetic_ecg(500, 100.0, 12), fs=100.0)
    _refused(header, "6,000 samples", limits=ReadLimits(max_signal_samples=5999))
    assert read_study(header, limits=ReadLimits(max_signal_samples=6000)).array.shape == (12, 500)


def test_png_limit_and_a_header_claiming_ten_gigapixels(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
    _refused(path, "20 pixels", limits=ReadLimits(max_image_pixels=19))
    # IHDR says 100000 x 100000 with no data behind it: Pillow's bomb guard refuses it first.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_with_ihdr(100_000, 100_000))
    _refused(bomb, "decompression-bomb guard", "10000000000 pixels")
    # Between our limit and Pillow's, ours names itself.
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png_with_ihdr(12_000, 10_000))
    _refused(wide, "image too large: 120,000,000 pixels", "ReadLimits")


def _png_with_ihdr(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
            + chunk(b"IEND", b""))


def test_npy_header_claims_are_checked_before_allocation(tmp_path):
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (10 ** 6, 10 ** 6)})
        f.write(b"\0" * 64)
    _refused(huge, "array too large: 1,000,000,000,000 values")
    short = tmp_path / "short.npy"
    with short.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (100, 100)})
        f.write(b"\0" * 64)
    _refused(short, "truncated .npy file", "64 data bytes", "(100, 100)")


def test_npz_archive_and_structured_dtype_named_npy_are_refused(tmp_path):
    archive = tmp_path / "archive.npy"
    with archive.open("wb") as f:
        np.savez(f, a=np.zeros(3))
    _refused(archive, "unreadable .npy file")
    structured = tmp_path / "structured.npy"
    np.save(structured, np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    _refused(structured, "unsupported array dtype")


def test_limits_bound_the_decoded_array_of_each_kind(tmp_path):
    path = tmp_path / "v.npy"
    np.save(path, np.zeros((3, 4, 5), np.float32))
    _refused(path, "volume too large: 3 slices", expect="volume3d", limits=ReadLimits(max_frames=2))
    np.save(path, np.zeros((2, 50), np.float32))
    _refused(path, "signal too large: 100 samples", expect="signal1d",
             limits=ReadLimits(max_signal_samples=99))


# --------------------------------------------------------------------------- meaningless values

def test_zero_pixel_spacing_is_not_stated_and_imager_spacing_is_used_instead(tmp_path):
    zero = write_dicom(tmp_path / "zero.dcm", np.zeros((4, 5), np.uint16), pixel_spacing=(0, 0))
    assert read_study(zero).meta["pixel_spacing"] is None
    imager = write_dicom(tmp_path / "imager.dcm", np.zeros((4, 5), np.uint16),
                         pixel_spacing=(0, 0), extra={"ImagerPixelSpacing": [0.139, 0.139]})
    assert read_study(imager).meta["pixel_spacing"] == (0.139, 0.139)


def test_zero_slice_thickness_and_nan_positions_give_no_spacing(tmp_path):
    path = write_dicom(tmp_path / "mf.dcm", np.zeros((3, 4, 5), np.uint16),
                       extra={"SliceThickness": 0.0})
    assert read_study(path).meta["spacing"] is None
    folder = tmp_path / "series"
    folder.mkdir()
    for z in range(2):
        write_dicom(folder / f"s{z}.dcm", np.full((4, 5), z, np.uint16), series_uid="1.2.3",
                    position=(0.0, 0.0, float("nan")), instance_number=2 - z,
                    extra={"SliceThickness": 1.5})
    study = read_study(folder)
    # Positions that are not numbers are treated as absent: instance order, header thickness.
    np.testing.assert_array_equal(study.array[:, 0, 0], [1, 0])
    assert study.meta["spacing"] == (1.5, 0.5, 0.7)


def test_wfdb_zero_sampling_frequency(tmp_path):
    header = write_wfdb(tmp_path, "rec", synthetic_ecg(100, 100.0, 2), fs=100.0)
    lines = header.read_text().splitlines()
    first = lines[0].split()
    first[2] = "0"  # the header grammar has no sign, so zero is the one non-positive rate
    header.write_text("\n".join([" ".join(first), *lines[1:]]) + "\n")
    _refused(header, "sampling frequency")


def test_wfdb_header_naming_a_signal_file_in_another_folder_is_refused(tmp_path):
    (tmp_path / "outside.dat").write_bytes(b"\0" * 400)
    folder = tmp_path / "records"
    folder.mkdir()
    header = write_wfdb(folder, "rec", synthetic_ecg(100, 100.0, 2), fs=100.0)
    header.write_text(header.read_text().replace("rec.dat", "../outside.dat"))
    _refused(header, "invalid syntax in signal line")
