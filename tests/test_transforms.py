"""Transform tests: shapes, value ranges and hand-computed numbers for every modality."""
from __future__ import annotations

import pickle

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from m3bind.data.preprocess_specs import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SPEC_TYPES, CTPreprocess,
                                          ECGPreprocess, PathologyPreprocess, RetinaPreprocess,
                                          XrayPreprocess)
from m3bind.data.readers import Study, resample_signal
from m3bind.data.transforms import build_transform, default_preprocess
from m3bind.errors import ConfigError, DataError
from m3bind.modalities import BUILTIN_MODALITIES, MODALITY_NAMES
from m3bind.signal_kinds import SignalKind


def image_study(array, path="img.png") -> Study:
    return Study(np.asarray(array, np.float32), {"path": path, "kind": SignalKind.IMAGE_2D})


def volume_study(array, spacing=None, path="ct.nii.gz") -> Study:
    return Study(np.asarray(array, np.float32),
                 {"path": path, "kind": SignalKind.VOLUME_3D, "spacing": spacing})


def ecg_study(array, fs, path="rec.hea") -> Study:
    return Study(np.asarray(array, np.float32), {"path": path, "kind": SignalKind.SIGNAL_1D, "fs": fs})


# --------------------------------------------------------------------------- X-ray

def test_xray_published_defaults_shape_and_range():
    rng = np.random.default_rng(0)
    out = build_transform("xray")(image_study(rng.uniform(-1000, 3000, size=(60, 50))))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_xray_wide_image_is_padded_top_and_bottom():
    image = np.full((40, 80), 500.0)
    image[20, 40] = 0.0  # min -> 0, everything else -> 1 after min/max scaling
    out = build_transform("xray", default_preprocess("xray", demo=True))(image_study(image))
    assert out.shape == (1, 64, 64)
    # By hand: 40x80 -> longest side 72 -> 36x72; pad 18 rows above and below -> 72x72;
    # center crop 64 starts at row 4, so rows 0..13 and 50..63 are padding (0 -> -1).
    assert torch.all(out[0, :14] == -1.0) and torch.all(out[0, 50:] == -1.0)
    assert out[0, 14:50].mean() > 0.95
    assert out[0, 14:50, 10].min() > 0.9  # image content reaches the left crop edge


def test_xray_tall_image_is_padded_left_and_right():
    out = build_transform("xray", XrayPreprocess(size=64, resize=72, channels=1))(
        image_study(np.tile(np.linspace(0, 1, 80)[:, None], (1, 40))))
    assert torch.all(out[0, :, :14] == -1.0) and torch.all(out[0, :, 50:] == -1.0)
    column = out[0, :, 30]
    assert torch.all(column[1:] > column[:-1])  # the vertical ramp survives, brighter downwards


def test_xray_window_maps_to_minus_one_one():
    image = np.zeros((72, 72))
    image[:24], image[24:48], image[48:] = -50.0, 50.0, 150.0
    spec = XrayPreprocess(size=72, resize=72, channels=1, window=(0.0, 100.0))
    out = build_transform("xray", spec)(image_study(image))
    # (-50 -> clipped 0 -> -1), (50 -> 0.5 -> 0), (150 -> clipped 1 -> 1)
    assert out[0, 10, 36] == -1.0 and out[0, 36, 36] == 0.0 and out[0, 60, 36] == 1.0


def test_xray_colour_input_becomes_luma():
    rgb = np.zeros((72, 72, 3))
    rgb[:, 36:] = [255.0, 0.0, 0.0]
    spec = XrayPreprocess(size=72, resize=72, channels=1, window=(0.0, 255.0))
    out = build_transform("xray", spec)(image_study(rgb))
    # pure red has luma 0.299 -> (0.299 - 0.5) / 0.5
    assert out[0, 36, 60].item() == pytest.approx((0.299 - 0.5) / 0.5, abs=1e-5)


# --------------------------------------------------------------------------- CT

def test_ct_hu_clipping_and_scaling_by_hand():
    hu = np.array([[[-2000, -1000, 0], [500, 1000, 1500]]])  # (1, 2, 3)
    spec = CTPreprocess(spacing=None, shape=(1, 2, 3))
    out = build_transform("ct", spec)(volume_study(hu))
    assert out.shape == (1, 1, 2, 3)
    torch.testing.assert_close(out[0, 0], torch.tensor([[-1.0, -1.0, 0.0], [0.5, 1.0, 1.0]]))


def test_ct_pads_with_minus_one_and_crops_centered():
    volume = np.zeros((4, 20, 6))  # 0 HU everywhere
    out = build_transform("ct", CTPreprocess(spacing=None, shape=(8, 16, 16)))(volume_study(volume))
    assert out.shape == (1, 8, 16, 16)
    # D: 4 -> 8 pads 2 before and 2 after; W: 6 -> 16 pads 5 and 5; H: 20 -> 16 crops.
    assert torch.all(out[0, :2] == -1) and torch.all(out[0, 6:] == -1)
    assert torch.all(out[0, 2:6, :, 5:11] == 0)
    assert torch.all(out[0, 2:6, :, :5] == -1) and torch.all(out[0, 2:6, :, 11:] == -1)


def test_ct_resampling_changes_slice_count_by_spacing_ratio():
    z_ramp = np.broadcast_to((np.arange(20) * 10.0)[:, None, None], (20, 16, 16))  # 10 HU per slice
    spec = CTPreprocess(spacing=(5.0, 1.0, 1.0), shape=(12, 16, 16))
    out = build_transform("ct", spec)(volume_study(z_ramp, spacing=(2.5, 1.0, 1.0)))
    # 20 slices at 2.5 mm -> 10 slices at 5 mm, padded by one -1 slice on each side to 12.
    assert torch.all(out[0, 0] == -1) and torch.all(out[0, 11] == -1)
    # Trilinear (align_corners=False): output slice i samples input z = 2i + 0.5 -> 20i + 5 HU.
    expected = torch.tensor([(20 * i + 5) / 1000 for i in range(10)])
    torch.testing.assert_close(out[0, 1:11, 8, 8], expected)


def test_ct_demo_defaults_on_a_small_volume():
    spec = default_preprocess("ct", demo=True)
    volume = np.full((10, 40, 40), 400.0)
    out = build_transform("ct", spec)(volume_study(volume, spacing=(2.5, 2.0, 2.0)))
    assert out.shape == spec.output_shape() == (1, 32, 64, 64)
    # resampled to (5, 16, 16), then centered: slices 13..17, rows/cols 24..39.
    torch.testing.assert_close(out[0, 13:18, 24:40, 24:40], torch.full((5, 16, 16), 0.4))
    assert out[0, 0, 0, 0] == -1 and out[0, 12, 30, 30] == -1 and out[0, 15, 23, 30] == -1


def test_ct_published_spacing_with_a_small_output_shape():
    spec = default_preprocess("ct").model_copy(update={"shape": (8, 16, 16)})
    out = build_transform("ct", spec)(volume_study(np.zeros((3, 8, 8)), spacing=(3.0, 1.5, 1.5)))
    # 3 x 3.0 mm -> 6 slices of 1.5 mm; 8 x 1.5 mm -> 16 pixels of 0.75 mm.
    assert out.shape == (1, 8, 16, 16)
    assert torch.all(out[0, 1:7] == 0) and torch.all(out[0, 0] == -1) and torch.all(out[0, 7] == -1)


def test_ct_refuses_2d_images_and_missing_spacing():
    transform = build_transform("ct")
    with pytest.raises(DataError, match=r"chest\.png.*volume3d.*image2d"):
        transform(Study(np.zeros((8, 8, 3), np.float32),
                        {"path": "chest.png", "kind": SignalKind.IMAGE_2D}))
    with pytest.raises(DataError, match=r"plain\.npy.*\(D, H, W\).*\(8, 8\)"):
        transform(Study(np.zeros((8, 8), np.float32), {"path": "plain.npy", "kind": None}))
    with pytest.raises(DataError, match=r"vol\.npy.*no voxel spacing"):
        transform(volume_study(np.zeros((4, 4, 4)), spacing=None, path="vol.npy"))


# --------------------------------------------------------------------------- retina

def test_retina_canvas_pads_right_and_bottom():
    transform = build_transform("retina", default_preprocess("retina", demo=True))
    wide = transform(image_study(np.full((30, 60, 3), 255.0)))
    assert wide.shape == (3, 64, 64)
    # 30x60 -> 32x64 at the top-left; rows 32..63 are the zero canvas.
    assert torch.all(wide[:, :32] == 1.0) and torch.all(wide[:, 32:] == 0.0)
    tall = transform(image_study(np.full((60, 30), 127.5)))  # grayscale -> 3 channels
    assert torch.allclose(tall[:, :, :32], torch.tensor(0.5)) and torch.all(tall[:, :, 32:] == 0.0)


def test_retina_published_defaults_range():
    rng = np.random.default_rng(2)
    out = build_transform("retina")(image_study(rng.integers(0, 256, (40, 50, 3))))
    assert out.shape == (3, 512, 512)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.all(out[:, 410:, :] == 0.0)  # 40x50 -> 410x512, canvas below


# --------------------------------------------------------------------------- pathology

def test_pathology_matches_torchvision_normalize_when_no_resize_is_needed():
    rng = np.random.default_rng(3)
    tile = rng.integers(0, 256, size=(64, 80, 3)).astype(np.uint8)
    reference = T.Compose([T.CenterCrop(64), T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    expected = reference(Image.fromarray(tile))
    out = build_transform("pathology", default_preprocess("pathology", demo=True))(image_study(tile))
    assert out.shape == (3, 64, 64)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_pathology_resize_is_close_to_the_open_clip_pil_pipeline():
    yy, xx = np.mgrid[0:100, 0:130]
    tile = np.stack([yy * 2.5, xx * 1.9, (yy + xx) * 1.1], axis=2).astype(np.uint8)
    reference = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64),
                           T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    expected = reference(Image.fromarray(tile))
    out = build_transform("pathology", PathologyPreprocess(size=64))(image_study(tile))
    assert (out - expected).abs().mean() < 0.02  # PIL rounds to uint8; the filters agree
    assert build_transform("pathology")(image_study(tile)).shape == (3, 224, 224)


# --------------------------------------------------------------------------- ECG

def _sines(n_leads, n_samples, fs):
    t = np.arange(n_samples) / fs
    return np.stack([(1 + lead) * np.sin(2 * np.pi * 2 * t) + lead for lead in range(n_leads)])


def test_ecg_published_defaults_resample_and_zero_pad():
    signal = _sines(12, 2000, fs=250)  # 8 s at 250 Hz
    out = build_transform("ecg")(ecg_study(signal, fs=250))
    assert out.shape == (12, 5000)  # 10 s at 500 Hz
    # 8 s -> 4000 samples at 500 Hz; the last 2 s are zero padding.
    assert torch.all(out[:, 4000:] == 0)
    real = out[:, :4000]
    torch.testing.assert_close(real.mean(dim=1), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(real.std(dim=1, unbiased=False), torch.ones(12), atol=1e-4, rtol=0)


def test_ecg_demo_crops_and_keeps_millivolts_without_normalisation():
    signal = _sines(12, 3000, fs=250)  # 12 s
    spec = default_preprocess("ecg", demo=True).model_copy(update={"normalize": "none"})
    out = build_transform("ecg", spec)(ecg_study(signal, fs=250))
    assert out.shape == (12, 1000)  # 10 s at 100 Hz: cropped from 1200
    expected = resample_signal(signal, 250, 100)[:, :1000]
    torch.testing.assert_close(out, torch.from_numpy(expected))
    assert out[5, 500:900].max() == pytest.approx(5 + 6, abs=0.05)  # offset 5 + amplitude 6 mV


def test_ecg_flat_lead_becomes_zeros_not_nan():
    signal = _sines(12, 1000, fs=100)
    signal[3] = 0.7
    out = build_transform("ecg", ECGPreprocess(fs=100))(ecg_study(signal, fs=100))
    assert torch.all(out[3] == 0) and torch.isfinite(out).all()


def test_ecg_bad_inputs():
    transform = build_transform("ecg")
    with pytest.raises(DataError, match=r"rec\.hea.*6 leads \(1, 2, 3, 4, 5, 6\), expected 12"):
        transform(ecg_study(np.zeros((6, 1000)), fs=500))
    # (samples, leads) instead of (leads, samples): a short message that says so, not 5000 lead names
    with pytest.raises(DataError) as transposed:
        transform(ecg_study(np.zeros((5000, 12)), fs=500))
    message = str(transposed.value)
    assert "ECG has 5000 leads (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, ... (4985 more)), expected 12" in message
    assert message.endswith("an array of shape (5000, 12) looks transposed: leads go first, (leads, samples)")
    assert len(message) < 400
    gappy = np.zeros((12, 1000))
    gappy[7, 5] = np.nan
    with pytest.raises(DataError, match=r"rec\.hea.*1 NaN samples in lead 8"):
        transform(ecg_study(gappy, fs=500))
    with pytest.raises(DataError, match="no sampling rate"):
        transform(Study(np.zeros((12, 1000), np.float32), {"path": "x.npy", "kind": None}))


# --------------------------------------------------------------------------- settings and factory

def test_default_preprocess_published_and_demo_values():
    # A modality's spec takes the modality's kind of signal, and its demo output has as many
    # channels (leads) as the built-in encoder takes.
    for name, info in BUILTIN_MODALITIES.items():
        assert info.preprocess.kind is info.kind, name
        assert default_preprocess(name, demo=True).output_shape()[0] == info.channels, name
    xray, ct = default_preprocess("xray"), default_preprocess("ct")
    assert (xray.size, xray.resize, xray.channels, xray.mean, xray.std) == (224, 256, 3, 0.5, 0.5)
    assert (ct.hu_min, ct.hu_max, ct.spacing, ct.shape) == (-1000, 1000, (1.5, 0.75, 0.75), (240, 480, 480))
    assert default_preprocess("retina").size == 512
    assert default_preprocess("pathology").mean == OPENAI_CLIP_MEAN
    ecg = default_preprocess("ecg")
    assert ecg.output_shape() == (12, 5000) and ecg.normalize == "per_lead_zscore"
    demo = {m: default_preprocess(m, demo=True).output_shape() for m in MODALITY_NAMES}
    assert demo == {"xray": (1, 64, 64), "ct": (1, 32, 64, 64), "retina": (3, 64, 64),
                    "ecg": (12, 1000), "pathology": (3, 64, 64)}
    with pytest.raises(ConfigError, match="mri"):
        default_preprocess("mri")


def test_settings_models_forbid_unknown_keys_and_document_every_field():
    with pytest.raises(pydantic.ValidationError, match="sizee"):
        XrayPreprocess.model_validate({"sizee": 10})
    with pytest.raises(pydantic.ValidationError, match="hu_min"):
        CTPreprocess(hu_min=100, hu_max=0)
    for model in SPEC_TYPES:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
    # YAML gives lists; they become tuples.
    assert CTPreprocess.model_validate({"shape": [8, 16, 16]}).shape == (8, 16, 16)


def test_build_transform_from_dict_and_pickle_round_trip():
    transform = build_transform("retina", {"size": 32})
    assert transform.spec == RetinaPreprocess(size=32)
    clone = pickle.loads(pickle.dumps(transform))
    study = image_study(np.random.default_rng(4).integers(0, 256, (20, 30, 3)))
    assert torch.equal(clone(study), transform(study))
    # A custom modality reuses a built-in settings model; a dict needs a built-in name.
    assert build_transform("mri", CTPreprocess(spacing=None, shape=(2, 2, 2))).modality == "mri"
    with pytest.raises(ConfigError, match="mri"):
        build_transform("mri", {"size": 3})


def test_an_eight_lead_ecg_gets_its_limb_leads_derived():
    """Recorders often store only the 8 independent leads (I, II, V1-V6); the other four follow
    from Einthoven's law and Goldberger's augmented leads, so a 12-lead model can read them.
    Other lead sets are refused with their names."""
    from m3bind.data.transforms import twelve_from_eight_leads

    rng = np.random.default_rng(0)
    lead_i, lead_ii, chest = rng.normal(size=500), rng.normal(size=500), rng.normal(size=(6, 500))
    full = np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
                     lead_ii - lead_i / 2, *chest]).astype(np.float32)
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    eight = [0, 1, 6, 7, 8, 9, 10, 11]
    assert np.allclose(twelve_from_eight_leads(full[eight], [names[i] for i in eight]), full, atol=1e-6)
    assert twelve_from_eight_leads(full[:8], names[:8]) is None  # no V3-V6
    transform = build_transform("ecg", ECGPreprocess(fs=100.0, normalize="none"))
    as_twelve = transform(Study(full, {"fs": 100.0, "lead_names": names, "path": "a.hea"}))
    as_eight = transform(Study(full[eight], {"fs": 100.0, "lead_names": [names[i] for i in eight], "path": "b.hea"}))
    assert torch.allclose(as_eight, as_twelve, atol=1e-6)
    with pytest.raises(DataError, match=r"ECG has 8 leads \(I, II, III, aVR, aVL, aVF, V1, V2\), expected 12 \(or the 8"):
        transform(Study(full[:8], {"fs": 100.0, "lead_names": names[:8], "path": "c.hea"}))


@pytest.mark.parametrize("modality", ["retina", "pathology"])
def test_a_photo_of_any_bit_depth_is_preprocessed_like_its_8bit_version(tmp_path, modality):
    """Photographic transforms divide by 255 (max_value); a 16-bit or float grayscale file keeps
    its own units when read, so without rescaling it came out saturated (16-bit) or black (float)."""
    import tifffile
    from PIL import Image

    from m3bind.data.readers import read_study

    rng = np.random.default_rng(0)
    eight = (rng.random((90, 70)) * 255).astype(np.uint8)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")       # 0..65535
    tifffile.imwrite(tmp_path / "sixteen.tif", eight.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "unit.tif", eight.astype(np.float32) / 255)           # 0..1
    transform = build_transform(modality, default_preprocess(modality, demo=True))
    reference = transform(read_study(tmp_path / "eight.png"))
    assert float(reference.std()) > 0.1
    for name in ("sixteen.png", "sixteen.tif", "unit.tif"):
        torch.testing.assert_close(transform(read_study(tmp_path / name)), reference, atol=1e-5, rtol=0, msg=name)
