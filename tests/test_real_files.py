"""Real files from the field, offline: read -> preprocess -> encode.

The files ship inside installed test dependencies (nothing is downloaded):

* pydicom: ``CT_small.dcm`` (a CT slice) and ``waveform_ecg.dcm`` (a 12-lead resting ECG);
* pydicom-data 1.0.0 (NEMA/GDCM test files): ``RG1_UNCI.dcm`` (a PA chest radiograph,
  computed radiography, MONOCHROME1), ``693_UNCI.dcm`` (a 512 x 512 head CT slice) and
  ``eCT_Supplemental.dcm`` (an enhanced multi-frame CT, 2 frames of 512 x 512);
* scikit-image 0.26.0: ``retina.jpg`` (a fundus photograph, CC0), ``microaneurysms.png``
  (a green-channel fundus crop with lesions, CC0) and ``ihc.png`` (an IHC-stained colon
  section, for pathology).

Each goes through :func:`read_study` and the modality's transform at the demo sizes and at
the published models' sizes; at the demo sizes a tiny built-in model encodes it. Facts the
files state (pixel spacing, rescale to HU, photometric interpretation, lead names, sampling
rate, duration) are checked against the values in their headers.
"""
from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from m3bind.data.readers import STANDARD_LEADS, Study, read_study
from m3bind.data.transforms import build_transform, default_preprocess
from m3bind.models.builtin import build_builtin_model
from m3bind.signal_kinds import SignalKind

TEXTS = {
    "xray": ["No acute cardiopulmonary process.", "Small left pleural effusion."],
    "ct": ["No intracranial haemorrhage.", "Pulmonary nodule in the right upper lobe."],
    "retina": ["Healthy fundus, no lesion signs.", "Microaneurysms and dot haemorrhages."],
    "ecg": ["Sinus rhythm, normal ECG.", "Atrial fibrillation."],
    "pathology": ["Benign colonic mucosa.", "Adenocarcinoma with glandular architecture."],
}


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom / pydicom-data test files)"
    return Path(path)


def skimage_file(name: str) -> Path:
    path = Path(str(importlib.resources.files("skimage.data") / name))
    assert path.is_file(), f"{name} is not in the installed scikit-image"
    return path


def raw_pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


@pytest.fixture(scope="module")
def encoders():
    return {modality: build_builtin_model(modality, texts).eval()
            for modality, texts in TEXTS.items()}


def check_user_path(study: Study, modality: str, encoders, demo_shape: tuple[int, ...],
                    published_shape: tuple[int, ...]) -> torch.Tensor:
    """Preprocess at both sizes; encode the demo-size tensor. Returns the demo-size tensor."""
    published = build_transform(modality, default_preprocess(modality, demo=False))(study)
    assert tuple(published.shape) == published_shape
    assert bool(published.isfinite().all())
    demo = build_transform(modality, default_preprocess(modality, demo=True))(study)
    assert tuple(demo.shape) == demo_shape
    assert bool(demo.isfinite().all())
    with torch.no_grad():
        embedding = encoders[modality].encode_image(demo[None])
    assert embedding.shape == (1, encoders[modality].native_dim)
    assert bool(embedding.isfinite().all())
    assert embedding.norm(dim=1).item() == pytest.approx(1.0, abs=1e-5)
    return demo


# --------------------------------------------------------------------------- chest radiograph

def test_chest_radiograph_rg1(encoders):
    path = dicom_file("RG1_UNCI.dcm")
    study = read_study(path, expect=SignalKind.IMAGE_2D)
    assert study.array.shape == (1955, 1841)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.PhotometricInterpretation == "MONOCHROME1" and header.BitsStored == 15
    assert header.ViewPosition == "PA"
    # MONOCHROME1 is mirrored within its 15 stored bits so that dense tissue is bright.
    assert study.meta["inverted"] is True
    np.testing.assert_array_equal(study.array, (2 ** 15 - 1) - raw_pixels(path).astype(np.float32))
    # The file states PixelSpacing 0\0 ("unknown") and no ImagerPixelSpacing.
    assert [float(v) for v in header.PixelSpacing] == [0.0, 0.0]
    assert study.meta["pixel_spacing"] is None
    # After inversion the lungs (air) are darker than the mediastinum between them, in the
    # middle of the image height. A missed or doubled inversion gives the opposite.
    height, width = study.array.shape
    band = study.array[int(0.35 * height):int(0.55 * height)]
    right_lung = band[:, int(0.20 * width):int(0.35 * width)].mean()
    left_lung = band[:, int(0.65 * width):int(0.80 * width)].mean()
    mediastinum = band[:, int(0.47 * width):int(0.53 * width)].mean()
    assert mediastinum - max(right_lung, left_lung) > 3000
    tensor = check_user_path(study, "xray", encoders, (1, 64, 64), (3, 224, 224))
    assert tensor.min() >= -1 and tensor.max() <= 1


# --------------------------------------------------------------------------- CT

def test_ct_small_slice_rescales_to_hounsfield_units():
    path = dicom_file("CT_small.dcm")
    study = read_study(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert (float(header.RescaleSlope), float(header.RescaleIntercept)) == (1.0, -1024.0)
    assert study.array.shape == (128, 128)
    np.testing.assert_array_equal(study.array, raw_pixels(path).astype(np.float32) - 1024)
    assert study.meta["pixel_spacing"] == (0.661468, 0.661468)
    assert study.array.min() >= -1024
    # a CT slice through the body: its median pixel is soft tissue, within +-100 HU of water
    assert -100 <= float(np.median(study.array)) <= 100


def test_ct_small_as_a_one_slice_series_folder(tmp_path, encoders):
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(dicom_file("CT_small.dcm"), folder / "IM0001")  # a bare DICOM file name
    study = read_study(folder, expect=SignalKind.VOLUME_3D)
    assert study.array.shape == (1, 128, 128)
    # one slice: its thickness (5 mm) is the slice spacing
    assert study.meta["spacing"] == pytest.approx((5.0, 0.661468, 0.661468))
    check_user_path(study, "ct", encoders, (1, 32, 64, 64), (1, 240, 480, 480))


def test_head_ct_512_slice_693():
    path = dicom_file("693_UNCI.dcm")
    study = read_study(path)
    assert study.array.shape == (512, 512)
    assert study.meta["pixel_spacing"] == (0.478516, 0.478516)
    np.testing.assert_array_equal(study.array, raw_pixels(path).astype(np.float32) - 1024)
    # The air around the head reads -1000 HU: the middle of the values near it is -1000 +- 30.
    air = study.array[(study.array > -1200) & (study.array < -800)]
    assert air.size > 0.2 * study.array.size
    assert abs(float(np.median(air)) + 1000) < 30


def test_enhanced_multiframe_ct_is_a_volume_in_hounsfield_units(encoders):
    path = dicom_file("eCT_Supplemental.dcm")
    study = read_study(path, expect=SignalKind.VOLUME_3D)
    assert study.array.shape == (2, 512, 512)
    # Slice spacing from the two frames' positions (z -159 and -149 mm), pixel spacing and
    # rescale intercept -1024 from the shared functional groups.
    assert study.meta["spacing"] == pytest.approx((10.0, 0.388672, 0.388672))
    # The rows run along -x (ImageOrientationPatient -1\0\0\0\1\0), so the slice normal,
    # row x column, points to the feet: frame 2 (z = -149) comes before frame 1 (z = -159).
    stored = raw_pixels(path).astype(np.float32)
    np.testing.assert_array_equal(study.array, stored[::-1] - 1024)
    check_user_path(study, "ct", encoders, (1, 32, 64, 64), (1, 240, 480, 480))


# --------------------------------------------------------------------------- retina

def test_fundus_photograph_retina_jpg(encoders):
    study = read_study(skimage_file("retina.jpg"), expect=SignalKind.IMAGE_2D)
    assert study.array.shape == (1411, 1411, 3)
    assert study.array.min() >= 0 and study.array.max() <= 255
    # A fundus photograph: a bright, red-dominated disc in a dark frame.
    centre = study.array[500:900, 500:900].reshape(-1, 3).mean(axis=0)
    corner = study.array[:60, :60].mean()
    assert centre[0] > centre[1] > centre[2]
    assert corner < 20 < centre[0]
    tensor = check_user_path(study, "retina", encoders, (3, 64, 64), (3, 512, 512))
    assert tensor.min() >= 0 and tensor.max() <= 1


def test_green_channel_fundus_crop_microaneurysms_png(encoders):
    study = read_study(skimage_file("microaneurysms.png"))
    assert study.array.shape == (102, 102)
    assert study.meta["mode"] == "L"
    tensor = check_user_path(study, "retina", encoders, (3, 64, 64), (3, 512, 512))
    # grayscale is repeated into the three channels
    assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


# --------------------------------------------------------------------------- pathology

def test_ihc_stained_tissue_for_pathology(encoders):
    study = read_study(skimage_file("ihc.png"))
    assert study.array.shape == (512, 512, 3)
    check_user_path(study, "pathology", encoders, (3, 64, 64), (3, 224, 224))


# --------------------------------------------------------------------------- ECG

def test_dicom_ecg_waveform(encoders):
    study = read_study(dicom_file("waveform_ecg.dcm"), expect=SignalKind.SIGNAL_1D,
                       expected_leads=12)
    assert study.meta["lead_names"] == list(STANDARD_LEADS)
    assert (study.meta["fs"], study.meta["duration_s"]) == (1000.0, 10.0)
    check_user_path(study, "ecg", encoders, (12, 1000), (12, 5000))
