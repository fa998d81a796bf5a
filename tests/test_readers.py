"""Reader tests: files written with each format's own library, read back with read_study."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _format_writers import TWELVE_LEADS, synthetic_ecg, write_dicom, write_nifti, write_wfdb
from m3bind.data.readers import SUPPORTED_EXTENSIONS, read_study, resample_signal
from m3bind.errors import DataError
from m3bind.signal_kinds import SignalKind


def _raises_data_error(path, *fragments, **kwargs) -> DataError:
    """read_study(path) must raise DataError whose message names the file and each fragment."""
    with pytest.raises(DataError) as info:
        read_study(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


# --------------------------------------------------------------------------- DICOM

def test_dicom_rescale_gives_exact_hounsfield_units_and_metadata(tmp_path):
    stored = (np.arange(20, dtype=np.uint16) * 150).reshape(4, 5)  # 0 .. 2850
    path = write_dicom(tmp_path / "slice.dcm", stored, slope=2, intercept=-1024)
    study = read_study(path)
    assert study.array.dtype == np.float32
    assert study.array.shape == (4, 5)
    # By hand: stored 0 -> -1024 HU, 150 -> -724, 2850 -> 4676.
    assert study.array[0, 0] == -1024 and study.array[0, 1] == -724 and study.array[3, 4] == 4676
    np.testing.assert_array_equal(study.array, stored.astype(np.float32) * 2 - 1024)
    meta = study.meta
    assert meta["pixel_spacing"] == (0.5, 0.7)
    assert meta["photometric"] == "MONOCHROME2"
    assert meta["modality_tag"] == "CT"
    assert meta["patient_id"] == "P001"
    assert meta["source_format"] == "dicom"
    assert meta["path"] == str(path)
    assert meta["kind"] == SignalKind.IMAGE_2D


def test_dicom_monochrome1_is_inverted_within_stored_bits(tmp_path):
    stored = np.array([[0, 4095, 1000]], dtype=np.uint16)  # 12 bits stored: range 0..4095
    path = write_dicom(tmp_path / "cr.dcm", stored, photometric="MONOCHROME1", bits_stored=12)
    study = read_study(path)
    np.testing.assert_array_equal(study.array, [[4095, 0, 3095]])
    assert study.meta["inverted"] is True
    # MONOCHROME2 files are left alone.
    plain = read_study(write_dicom(tmp_path / "dx.dcm", stored, bits_stored=12))
    np.testing.assert_array_equal(plain.array, [[0, 4095, 1000]])


def test_dicom_folder_is_sorted_by_position_with_slice_spacing(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    z_positions = [10.0, 12.5, 15.0, 17.5, 20.0]
    written_order = [3, 0, 4, 1, 2]
    for file_index, slice_index in enumerate(written_order):
        pixels = np.full((3, 4), slice_index * 10, dtype=np.uint16)
        # File names and instance numbers disagree with the true order on purpose.
        write_dicom(series / f"f{file_index}.dcm", pixels, slope=1, intercept=-1000,
                    position=(-5.0, -5.0, z_positions[slice_index]),
                    instance_number=100 - file_index, series_uid="1.2.3")
    study = read_study(series)
    assert study.array.shape == (5, 3, 4)
    np.testing.assert_array_equal(study.array[:, 0, 0], [-1000, -990, -980, -970, -960])
    assert study.meta["spacing"] == pytest.approx((2.5, 0.5, 0.7))
    assert study.meta["kind"] == SignalKind.VOLUME_3D
    assert study.meta["source_format"] == "dicom_series"


def test_dicom_folder_sorts_along_the_slice_normal_not_z(tmp_path):
    # Sagittal slices: rows along +y, columns along -z, so the normal is -x.
    series = tmp_path / "sagittal"
    series.mkdir()
    x_positions = [0.0, 3.0, 6.0]
    for slice_index, x in enumerate(x_positions):
        write_dicom(series / f"s{slice_index}.dcm", np.full((2, 2), slice_index, np.uint16),
                    position=(x, 0.0, 0.0), orientation=(0, 1, 0, 0, 0, -1), series_uid="9.9")
    study = read_study(series)
    # Ascending along the normal (-x) means descending x.
    np.testing.assert_array_equal(study.array[:, 0, 0], [2, 1, 0])
    assert study.meta["spacing"][0] == pytest.approx(3.0)


def test_dicom_folder_without_positions_falls_back_to_instance_number(tmp_path):
    series = tmp_path / "noposition"
    series.mkdir()
    for file_index, instance in enumerate([2, 3, 1]):
        write_dicom(series / f"a{file_index}.dcm", np.full((2, 2), instance, np.uint16),
                    orientation=None, instance_number=instance, series_uid="4.5",
                    extra={"SliceThickness": 3.0})
    study = read_study(series)
    np.testing.assert_array_equal(study.array[:, 0, 0], [1, 2, 3])
    assert study.meta["spacing"] == pytest.approx((3.0, 0.5, 0.7))


def test_dicom_multiframe_file_is_a_volume(tmp_path):
    frames = np.stack([np.full((3, 3), 100 * i, np.uint16) for i in range(4)])
    path = write_dicom(tmp_path / "multi.dcm", frames, slope=2, intercept=-1024,
                       extra={"SpacingBetweenSlices": 2.0})
    study = read_study(path, expect=SignalKind.VOLUME_3D)
    assert study.array.shape == (4, 3, 3)
    np.testing.assert_array_equal(study.array[:, 1, 1], [-1024, -824, -624, -424])
    assert study.meta["spacing"] == pytest.approx((2.0, 0.5, 0.7))


def test_dicom_folder_with_slices_of_different_shapes_is_refused(tmp_path):
    series = tmp_path / "mixed"
    series.mkdir()
    write_dicom(series / "a.dcm", np.zeros((3, 3), np.uint16), position=(0, 0, 0), series_uid="1")
    write_dicom(series / "b.dcm", np.zeros((4, 3), np.uint16), position=(0, 0, 1), series_uid="1")
    error = _raises_data_error(series, "different shapes", "a.dcm", "b.dcm")
    assert "(4, 3)" in str(error)


@pytest.mark.parametrize("keep", ["all_but_5", "half"])
def test_truncated_dicom_is_a_data_error(tmp_path, keep):
    full = write_dicom(tmp_path / "full.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    data = full.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-5] if keep == "all_but_5" else data[:len(data) // 2])
    error = _raises_data_error(cut, "truncated")
    if keep == "all_but_5":  # pydicom's own complaint about short pixel data is kept
        assert isinstance(error.__cause__, ValueError)


def test_single_dicom_slice_is_not_a_volume(tmp_path):
    path = write_dicom(tmp_path / "one.dcm", np.zeros((3, 3), np.uint16))
    _raises_data_error(path, "2D image", "3D volume", expect=SignalKind.VOLUME_3D)


# --------------------------------------------------------------------------- NIfTI

def test_nifti_scaling_spacing_and_reorientation(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (x, y, z), RAS affine
    path = write_nifti(tmp_path / "ct.nii.gz", raw, zooms=(0.8, 0.8, 2.5), slope=2, intercept=-1024)
    study = read_study(path, expect=SignalKind.VOLUME_3D)
    assert study.array.shape == (6, 5, 4)  # (z, y, x)
    assert study.meta["spacing"] == pytest.approx((2.5, 0.8, 0.8))
    # RAS -> LPS flips x and y: out[k, j, i] = raw[3 - i, 4 - j, k] * 2 - 1024.
    assert study.array[0, 0, 0] == raw[3, 4, 0] * 2 - 1024
    assert study.array[5, 1, 2] == raw[1, 3, 5] * 2 - 1024
    expected = (raw[::-1, ::-1, :].transpose(2, 1, 0).astype(np.float32) * 2 - 1024)
    np.testing.assert_array_equal(study.array, expected)


def test_nifti_and_dicom_series_of_the_same_scan_give_the_same_array(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 2000, size=(3, 4, 5)).astype(np.uint16)  # (z, rows=P, cols=L)
    series = tmp_path / "dicom"
    series.mkdir()
    for k in range(3):
        write_dicom(series / f"{k}.dcm", volume[k], pixel_spacing=(0.8, 0.8),
                    position=(0.0, 0.0, 2.5 * k), series_uid="7")
    ras = volume.transpose(2, 1, 0)[::-1, ::-1, :].astype(np.int16)  # (x=R, y=A, z=S)
    nifti = read_study(write_nifti(tmp_path / "same.nii", ras, zooms=(0.8, 0.8, 2.5)))
    dicom = read_study(series)
    np.testing.assert_array_equal(nifti.array, dicom.array)
    assert nifti.meta["spacing"] == pytest.approx(dicom.meta["spacing"])


def test_nifti_4d_with_one_volume_is_squeezed_and_2d_is_refused(tmp_path):
    four_d = read_study(write_nifti(tmp_path / "v.nii.gz", np.zeros((2, 3, 4, 1), np.float32)))
    assert four_d.array.shape == (4, 3, 2)
    flat = write_nifti(tmp_path / "flat.nii.gz", np.zeros((6, 7), np.float32))
    _raises_data_error(flat, "2D array", expect=SignalKind.VOLUME_3D)


def test_garbage_bytes_named_nii_gz_is_a_data_error(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"this is not a gzip stream" * 20)
    error = _raises_data_error(path, "unreadable NIfTI")
    assert error.__cause__ is not None


# --------------------------------------------------------------------------- WFDB

def test_wfdb_round_trip_within_adc_resolution(tmp_path):
    signal = synthetic_ecg(2500, fs=250)
    header = write_wfdb(tmp_path, "rec001", signal, fs=250, adc_gain=1000)
    for path in (header, tmp_path / "rec001", tmp_path / "rec001.dat"):
        study = read_study(path, expect=SignalKind.SIGNAL_1D, expected_leads=12)
        assert study.array.shape == (12, 2500)
        # 16-bit samples at 1000 units/mV: rounding error at most half a unit = 0.0005 mV.
        assert np.abs(study.array - signal.T).max() <= 0.0005 + 1e-6
        assert study.meta["fs"] == 250
        assert study.meta["lead_names"] == TWELVE_LEADS
        assert study.meta["units"] == ["mV"] * 12
        assert study.meta["duration_s"] == pytest.approx(10.0)


def test_wfdb_microvolts_are_converted_to_millivolts(tmp_path):
    import wfdb
    signal_uv = synthetic_ecg(500, fs=250, n_leads=2) * 1000
    wfdb.wrsamp("uv", fs=250, units=["uV", "uV"], sig_name=["I", "II"], p_signal=signal_uv,
                fmt=["16", "16"], adc_gain=[1.0, 1.0], baseline=[0, 0], write_dir=str(tmp_path))
    study = read_study(tmp_path / "uv.hea")
    assert study.meta["units"] == ["mV", "mV"]
    assert np.abs(study.array - signal_uv.T / 1000).max() <= 0.0005 + 1e-6


def test_resample_signal_250_to_500_doubles_length_and_keeps_the_waveform():
    fs_in = 250
    signal = synthetic_ecg(2500, fs=fs_in).T  # (12, 2500), up to 6.5 Hz
    out = resample_signal(signal, fs_in, 500)
    assert out.shape == (12, 5000) and out.dtype == np.float32
    # Every second output sample lies on an input sample; away from the edges they agree.
    np.testing.assert_allclose(out[:, 200:-200:2], signal[:, 100:-100], atol=2e-3)
    # 360 -> 500 Hz is the exact fraction 25/18: 3600 samples -> 5000.
    assert resample_signal(np.zeros((2, 3600)), 360, 500).shape == (2, 5000)


def test_wfdb_nan_sample_names_the_lead(tmp_path):
    signal = synthetic_ecg(1000, fs=250)
    signal[[10, 20, 30], 7] = np.nan  # lead V2
    header = write_wfdb(tmp_path, "gappy", signal, fs=250)
    _raises_data_error(header, "3 NaN samples in lead V2")


def test_wfdb_wrong_lead_count(tmp_path):
    header = write_wfdb(tmp_path, "six", synthetic_ecg(500, fs=250, n_leads=6), fs=250)
    _raises_data_error(header, "6 leads, expected 12", expected_leads=12)


def test_wfdb_truncated_signal_file(tmp_path):
    header = write_wfdb(tmp_path, "short", synthetic_ecg(1000, fs=250), fs=250)
    dat = tmp_path / "short.dat"
    dat.write_bytes(dat.read_bytes()[:1001])
    _raises_data_error(header, "unreadable WFDB")


# --------------------------------------------------------------------------- images and .npy

def test_png_grayscale_8_and_16_bit_round_trip(tmp_path):
    gray8 = (np.arange(30).reshape(5, 6) * 8).astype(np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    study = read_study(tmp_path / "g8.png", expect=SignalKind.IMAGE_2D)
    assert study.array.shape == (5, 6) and study.array.dtype == np.float32
    np.testing.assert_array_equal(study.array, gray8)
    gray16 = (np.arange(30).reshape(5, 6) * 2000).astype(np.uint16)  # up to 58000
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_study(tmp_path / "g16.png").array, gray16)


def test_png_colour_rgba_and_palette(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_study(tmp_path / "rgb.png").array, rgb)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    study = read_study(tmp_path / "rgba.png")
    assert study.array.shape == (4, 5, 3)
    np.testing.assert_array_equal(study.array, rgb)
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_study(tmp_path / "pal.png").array[0, :, :],
                                  [[255, 0, 0], [0, 0, 255]])


def test_jpeg_and_tiff_round_trip(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = np.stack([yy * 6, xx * 6, (yy + xx) * 3], axis=2).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)
    jpeg = read_study(tmp_path / "photo.jpg").array
    assert jpeg.shape == (32, 32, 3)
    assert np.abs(jpeg - smooth).mean() < 3.0  # lossy, but close
    floats = np.linspace(-3.5, 7.25, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(floats).save(tmp_path / "map.tiff")
    np.testing.assert_array_equal(read_study(tmp_path / "map.tiff").array, floats)


def test_npy_round_trip(tmp_path):
    volume = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 12
    np.save(tmp_path / "vol.npy", volume)
    study = read_study(tmp_path / "vol.npy", expect=SignalKind.VOLUME_3D)
    assert study.array.dtype == np.float32
    np.testing.assert_array_equal(study.array, volume)
    assert study.meta["kind"] == SignalKind.VOLUME_3D and study.meta["source_format"] == "npy"


# --------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path):
    _raises_data_error(tmp_path / "nowhere.png", "file not found")
    _raises_data_error(tmp_path / "nowhere.nii.gz", "file not found")


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    error = _raises_data_error(path, "unsupported file type '.txt'")
    for extension in SUPPORTED_EXTENSIONS:
        assert extension in str(error)


def test_nan_in_npy(tmp_path):
    image = np.ones((4, 4), np.float32)
    image[1, 2] = np.nan
    image[3, 3] = np.inf
    np.save(tmp_path / "nan.npy", image)
    _raises_data_error(tmp_path / "nan.npy", "1 NaN and 1 infinite values", "(1, 2)")


def test_npy_with_wrong_dimensions(tmp_path):
    np.save(tmp_path / "4d.npy", np.zeros((2, 3, 4, 5), np.float32))
    _raises_data_error(tmp_path / "4d.npy", "(2, 3, 4, 5)", "(H, W) or (H, W, 3)",
                       expect=SignalKind.IMAGE_2D)
    _raises_data_error(tmp_path / "4d.npy", "4 dimensions")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
    _raises_data_error(tmp_path / "empty.npy", "empty array")


def test_npy_signal_nan_names_lead_number(tmp_path):
    signal = np.zeros((3, 100), np.float32)
    signal[1, :4] = np.nan
    np.save(tmp_path / "ecg.npy", signal)
    _raises_data_error(tmp_path / "ecg.npy", "4 NaN samples in lead 2", expect=SignalKind.SIGNAL_1D)


def test_colour_image_where_a_volume_is_expected(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    _raises_data_error(tmp_path / "rgb.png", "2D image", "3D volume", expect=SignalKind.VOLUME_3D)


def test_corrupt_png(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _raises_data_error(path, "unreadable image")


def test_wfdb_leads_come_in_the_standard_order_with_standard_names(tmp_path):
    """A record that stores its leads in another order, upper-case names and an extra channel
    reads as the usual I, II, III, aVR, ... V6 (as DICOM ECGs already did): a model never sees
    V1 where it learnt lead I."""
    signal = synthetic_ecg(1000, fs=250, n_leads=13)
    stored = ["V1", "V2", "V3", "V4", "V5", "V6", "I", "II", "III", "AVR", "AVL", "AVF", "RESP"]
    header = write_wfdb(tmp_path, "shuffled", signal, fs=250, lead_names=stored)
    study = read_study(header, expect=SignalKind.SIGNAL_1D)
    assert study.meta["lead_names"] == TWELVE_LEADS and study.meta["dropped_channels"] == ["RESP"]
    for lead, name in enumerate(TWELVE_LEADS):
        column = [n.upper() for n in stored].index(name.upper())
        assert np.abs(study.array[lead] - signal[:, column]).max() <= 0.0005 + 1e-6
    plain = read_study(write_wfdb(tmp_path, "plain", signal[:, :12], fs=250), expect=SignalKind.SIGNAL_1D)
    assert plain.meta["dropped_channels"] == [] and plain.meta["lead_names"] == TWELVE_LEADS


@pytest.mark.parametrize(("name", "reference"), [("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),
                                                   ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm")])
def test_lossless_jpeg_dicom_decodes_like_its_uncompressed_original(name, reference):
    """JPEG Lossless (process 14) and JPEG-LS are how many PACS export CT and CR: Pillow reads
    neither, GDCM (a dependency) reads both."""
    from pydicom.data import get_testdata_file

    study = read_study(get_testdata_file(name, download=False))
    original = read_study(get_testdata_file(reference, download=False))
    assert study.array.shape == original.array.shape and study.array.std() > 0
    np.testing.assert_array_equal(study.array, original.array)


def test_a_dicom_no_decoder_reads_says_so_instead_of_corrupt():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPGExtended.dcm", download=False)
    with pytest.raises(DataError, match=r"JPGExtended\.dcm: no installed decoder reads DICOM pixel data compressed "
                                        r"as 'JPEG Extended \(Process 2 and 4\)'.*pylibjpeg-libjpeg"):
        read_study(path)


def _axial_series_and_scout(folder, slice_names):
    """A study folder as PACS exports it: axial slices (value z on slice z, 2 mm apart) and a
    one-file scout series, scout.dcm."""
    folder.mkdir()
    for z, name in enumerate(slice_names):
        write_dicom(folder / name, np.full((3, 4), z, dtype=np.uint16), slope=1, intercept=-1000,
                    position=(0.0, 0.0, 2.0 * z), series_uid="1.2.3.axial")
    write_dicom(folder / "scout.dcm", np.full((5, 6), 7, dtype=np.uint16), position=(0.0, 0.0, 0.0),
                orientation=(1, 0, 0, 0, 0, -1), series_uid="1.2.3.scout")
    return folder


def test_a_study_folder_with_a_localizer_reads_its_main_series(tmp_path):
    """PACS exports put the scout beside the axial series: the series with the most slices is the
    study (the other is listed in the metadata); two series of equal size are refused."""
    folder = _axial_series_and_scout(tmp_path / "study", [f"ax{z}.dcm" for z in range(4)])
    study = read_study(folder)
    assert study.array.shape == (4, 3, 4)
    np.testing.assert_array_equal(study.array[:, 0, 0], [-1000, -999, -998, -997])
    assert study.meta["other_series_left_out"] == ["1.2.3.scout: 1 file(s)"]
    for z in range(3):
        write_dicom(folder / f"cor{z}.dcm", np.full((3, 4), 1, dtype=np.uint16), position=(0.0, 2.0 * z, 0.0),
                    series_uid="1.2.3.scout")
    with pytest.raises(DataError, match=r"study: folder mixes 2 DICOM series and the largest two have 4 slice "
                                        r"files each; put each series in its own folder"):
        read_study(folder)


def test_a_study_folder_of_series_subfolders_reads_its_largest_series(tmp_path):
    """PACS exports lay a study out as Study/Series/IM0001: a manifest naming the study folder
    gets its largest series (the axial one, not the scout), and the others are listed."""
    study = tmp_path / "study"
    study.mkdir()
    _axial_series_and_scout(study / "2_axial", [f"IM{z:04d}" for z in range(6)])
    (study / "2_axial" / "scout.dcm").rename(study / "scout.dcm")
    (study / "1_scout").mkdir()
    (study / "scout.dcm").rename(study / "1_scout" / "IM0000")
    (study / "3_report").mkdir()
    (study / "3_report" / "sr.txt").write_text("not DICOM")
    read = read_study(study)
    assert read.array.shape == (6, 3, 4) and read.meta["n_files"] == 6
    np.testing.assert_array_equal(read.array[:, 0, 0], [-1000, -999, -998, -997, -996, -995])
    assert read.meta["other_series_left_out"] == ["1.2.3.scout: 1 file(s)"]
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="empty: folder holds no DICOM files, nor do its subfolders"):
        read_study(empty)


def test_a_folder_mixing_bare_named_slices_and_dcm_files_reads_all_of_them(tmp_path):
    """IM0000... beside a scout saved as scout.dcm: the bare-named slices are the series, not
    files to overlook because some name ends in .dcm (that read the 1-slice scout as the study)."""
    folder = _axial_series_and_scout(tmp_path / "study", [f"IM{z:04d}" for z in range(5)])
    (folder / "notes.txt").write_text("not an image")
    study = read_study(folder)
    assert study.array.shape == (5, 3, 4) and study.meta["n_files"] == 5
    assert study.meta["other_series_left_out"] == ["1.2.3.scout: 1 file(s)"]
