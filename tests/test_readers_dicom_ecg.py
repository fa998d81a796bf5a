"""DICOM ECG waveforms (12-lead and general ECG): lead mapping, scaling to mV, sampling rate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from m3bind.data.preprocess_specs import ECGPreprocess
from m3bind.data.limits import ReadLimits
from m3bind.data.readers import STANDARD_LEADS, read_study
from m3bind.data.transforms import build_transform, default_preprocess
from m3bind.errors import DataError
from m3bind.signal_kinds import SignalKind

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"


def _channel(meaning: str = "", code: str = "", label: str = "", sensitivity: float | None = 1.0,
             unit: str | None = "uV", correction: float = 1.0, baseline: float = 0.0) -> Dataset:
    channel = Dataset()
    source = Dataset()
    source.CodeValue = code or "x"
    source.CodingSchemeDesignator = "SCPECG"
    source.CodeMeaning = meaning
    channel.ChannelSourceSequence = [source]
    if label:
        channel.ChannelLabel = label
    if sensitivity is not None:
        channel.ChannelSensitivity = sensitivity
        channel.ChannelSensitivityCorrectionFactor = correction
        channel.ChannelBaseline = baseline
        if unit is not None:
            units = Dataset()
            units.CodeValue = unit
            units.CodingSchemeDesignator = "UCUM"
            units.CodeMeaning = unit
            channel.ChannelSensitivityUnitsSequence = [units]
    return channel


def _group(raw: np.ndarray, channels: list[Dataset], fs: float, originality: str = "ORIGINAL",
           label: str = "RHYTHM") -> Dataset:
    """A multiplex group holding ``raw`` (samples, channels) int16 values."""
    group = Dataset()
    group.WaveformOriginality = originality
    group.MultiplexGroupLabel = label
    group.NumberOfWaveformChannels = raw.shape[1]
    group.NumberOfWaveformSamples = raw.shape[0]
    group.SamplingFrequency = fs
    group.ChannelDefinitionSequence = channels
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = np.ascontiguousarray(raw, dtype="<i2").tobytes()
    return group


def write_dicom_ecg(path: Path, groups: list[Dataset], sop_class: str = TWELVE_LEAD_ECG) -> Path:
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=file_meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientID = "E01"
    ds.WaveformSequence = groups
    ds.save_as(path, enforce_file_format=True)
    return path


def _raw(n_samples: int, n_channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2000, 2000, size=(n_samples, n_channels),
                                                dtype=np.int16)


# --------------------------------------------------------------------------- the real file

@pytest.fixture(scope="module")
def real_ecg():
    path = get_testdata_file("waveform_ecg.dcm", download=False)
    assert path is not None, "pydicom's waveform_ecg.dcm is missing from the installed package"
    return path, read_study(path)


def test_real_ecg_is_ten_seconds_of_twelve_standard_leads_at_1000_hz(real_ecg):
    _, study = real_ecg
    assert study.array.shape == (12, 10_000)
    assert study.array.dtype == np.float32
    assert study.meta["fs"] == 1000.0
    assert study.meta["duration_s"] == 10.0
    assert study.meta["lead_names"] == list(STANDARD_LEADS)
    assert study.meta["units"] == ["mV"] * 12
    assert study.meta["kind"] == SignalKind.SIGNAL_1D
    assert study.meta["source_format"] == "dicom_ecg"
    assert study.meta["multiplex_group"] == "RHYTHM"  # not the cart's derived median beats
    assert study.meta["patient_id"] == "642341"


def test_real_ecg_values_are_sensitivity_times_raw_in_millivolts(real_ecg):
    path, study = real_ecg
    ds = pydicom.dcmread(path)
    raw = np.frombuffer(ds.WaveformSequence[0].WaveformData, dtype="<i2").reshape(10_000, 12)
    # Each channel states 1.25 uV per unit, correction 1, baseline 0; channel order I..V6.
    np.testing.assert_allclose(study.array, raw.T * 1.25e-3, rtol=0, atol=1e-6)
    # A resting ECG: every lead within +-5 mV, and a peak-to-peak of at least 0.3 mV.
    assert np.abs(study.array).max() < 5
    assert (np.ptp(study.array, axis=1) > 0.3).all()


def test_real_ecg_limb_leads_obey_einthoven_and_goldberger(real_ecg):
    """III = II - I and the augmented leads are fixed combinations of I and II: a lead put in
    the wrong place by the label mapping breaks these identities by whole millivolts."""
    _, study = real_ecg
    lead = dict(zip(study.meta["lead_names"], study.array.astype(np.float64)))
    step = 1.25e-3  # one quantisation step, mV
    assert np.abs(lead["III"] - (lead["II"] - lead["I"])).max() <= step
    assert np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2).max() <= step
    assert np.abs(lead["aVL"] - (lead["I"] - lead["II"] / 2)).max() <= step
    assert np.abs(lead["aVF"] - (lead["II"] - lead["I"] / 2)).max() <= step


@pytest.mark.parametrize("demo, shape", [(True, (12, 1000)), (False, (12, 5000))])
def test_real_ecg_through_the_ecg_transform_is_resampled_to_the_models_rate(real_ecg, demo, shape):
    _, study = real_ecg
    tensor = build_transform("ecg", default_preprocess("ecg", demo=demo))(study)
    assert tuple(tensor.shape) == shape
    assert bool(tensor.isfinite().all())
    # per-lead z-score over the whole 10 s: every lead has mean 0 and std 1
    assert np.allclose(tensor.mean(dim=1).numpy(), 0, atol=1e-4)
    assert np.allclose(tensor.std(dim=1, unbiased=False).numpy(), 1, atol=1e-3)


def test_real_ecg_resampling_keeps_the_waveform(real_ecg):
    """1000 -> 500 Hz with mV kept: each output sample is close to the input at the same time."""
    _, study = real_ecg
    tensor = build_transform("ecg", ECGPreprocess(fs=500.0, normalize="none"))(study)
    lead_ii = tensor[1].numpy()
    original = study.array[1, ::2]
    # the recording is band-limited to 300 Hz by the cart; away from the edges the
    # polyphase filter keeps it within a few microvolts of the decimated original
    assert np.abs(lead_ii[50:-50] - original[50:-50]).max() < 0.05
    assert np.corrcoef(lead_ii, original)[0, 1] > 0.999


# --------------------------------------------------------------------------- written files

def test_channels_are_reordered_by_their_labels_and_scaled_to_millivolts(tmp_path):
    file_order = ["V3", "I", "aVR", "II", "V6", "III", "aVL", "V1", "aVF", "V5", "V2", "V4"]
    raw = _raw(600, 12)
    styles = [
        lambda lead: _channel(meaning=f"Lead {lead}"),
        lambda lead: _channel(code=f"MDC_ECG_LEAD_{lead.upper()}"),
        lambda lead: _channel(label=lead),
    ]
    sensitivity = [2.5 if i % 2 else 5.0 for i in range(12)]
    units = ["uV" if i % 3 else "mV" for i in range(12)]
    baseline = [float(i) for i in range(12)]
    channels = []
    for i, lead in enumerate(file_order):
        channel = styles[i % 3](lead)
        channel.ChannelSensitivity = sensitivity[i]
        channel.ChannelSensitivityCorrectionFactor = 0.5
        channel.ChannelBaseline = baseline[i]
        channel.ChannelSensitivityUnitsSequence[0].CodeValue = units[i]
        channels.append(channel)
    path = write_dicom_ecg(tmp_path / "ecg.dcm", [_group(raw, channels, fs=500.0)])
    study = read_study(path)
    assert study.meta["lead_names"] == list(STANDARD_LEADS)
    assert study.array.shape == (12, 600)
    for out_index, lead in enumerate(STANDARD_LEADS):
        i = file_order.index(lead)
        factor = 1e-3 if units[i] == "uV" else 1.0
        expected = (raw[:, i] * sensitivity[i] * 0.5 + baseline[i]) * factor
        np.testing.assert_allclose(study.array[out_index], expected, rtol=1e-6, atol=1e-6)
    assert study.meta["fs"] == 500.0 and study.meta["duration_s"] == pytest.approx(1.2)


def test_extra_channels_are_dropped_when_all_twelve_leads_are_present(tmp_path):
    leads = list(STANDARD_LEADS) + ["V7", "Lead II rhythm strip"]
    raw = _raw(100, len(leads))
    channels = [_channel(meaning=f"Lead {lead}") for lead in leads[:13]]
    channels.append(_channel(meaning="Lead II", label="rhythm"))  # a second lead II
    path = write_dicom_ecg(tmp_path / "ecg15.dcm", [_group(raw, channels, fs=250.0)])
    study = read_study(path)
    assert study.meta["lead_names"] == list(STANDARD_LEADS)
    # the first channel labelled II is the one kept
    np.testing.assert_allclose(study.array[1], raw[:, 1] * 1e-3, atol=1e-7)
    assert study.meta["dropped_channels"] == ["Lead V7", "II"]


def test_a_three_lead_general_ecg_keeps_its_leads_standard_ones_first(tmp_path):
    raw = _raw(400, 3)
    channels = [_channel(meaning="Respiration"), _channel(meaning="Lead II"),
                _channel(meaning="Lead I (Einthoven)")]
    path = write_dicom_ecg(tmp_path / "holter.dcm", [_group(raw, channels, fs=200.0)],
                           sop_class=GENERAL_ECG)
    study = read_study(path)
    assert study.meta["lead_names"] == ["I", "II", "Respiration"]
    np.testing.assert_allclose(study.array[0], raw[:, 2] * 1e-3, atol=1e-7)
    # the 12-lead model's transform refuses it with the lead count
    with pytest.raises(DataError, match=r"ECG has 3 leads \(I, II, Respiration\), expected 12"):
        build_transform("ecg", default_preprocess("ecg", demo=True))(study)
    with pytest.raises(DataError, match="3 leads, expected 12"):
        read_study(path, expected_leads=12)


def test_the_original_rhythm_group_is_read_not_derived_median_beats(tmp_path):
    channels = [_channel(meaning=f"Lead {lead}") for lead in STANDARD_LEADS]
    median = _group(_raw(120, 12, seed=1), channels, fs=500.0, originality="DERIVED",
                    label="MEDIAN BEAT")
    rhythm_raw = _raw(5000, 12, seed=2)
    rhythm = _group(rhythm_raw, channels, fs=500.0)
    study = read_study(write_dicom_ecg(tmp_path / "two.dcm", [median, rhythm]))
    assert study.array.shape == (12, 5000)
    np.testing.assert_allclose(study.array[0], rhythm_raw[:, 0] * 1e-3, atol=1e-7)


def test_unknown_units_are_kept_and_named(tmp_path):
    raw = _raw(50, 2)
    channels = [_channel(meaning="Lead I", unit="mmHg"), _channel(meaning="Lead II", sensitivity=None)]
    study = read_study(write_dicom_ecg(tmp_path / "units.dcm", [_group(raw, channels, fs=100.0)],
                                       sop_class=GENERAL_ECG))
    assert study.meta["units"] == ["mmHg", "raw"]
    np.testing.assert_allclose(study.array[1], raw[:, 1], atol=0)


@pytest.mark.parametrize("fs", [0.0, -250.0])
def test_non_positive_sampling_rate_is_refused(tmp_path, fs):
    channels = [_channel(meaning="Lead I")]
    path = write_dicom_ecg(tmp_path / "fs.dcm", [_group(_raw(10, 1), channels, fs=fs)])
    with pytest.raises(DataError, match="sampling frequency") as info:
        read_study(path)
    assert path.name in str(info.value)


def test_waveform_data_shorter_than_declared_is_a_data_error(tmp_path):
    channels = [_channel(meaning=f"Lead {lead}") for lead in ("I", "II")]
    group = _group(_raw(100, 2), channels, fs=100.0)
    group.NumberOfWaveformSamples = 1000
    path = write_dicom_ecg(tmp_path / "short.dcm", [group])
    with pytest.raises(DataError, match="corrupt DICOM") as info:
        read_study(path)
    assert "short.dcm" in str(info.value)


def test_signal_limit_is_checked_from_the_header(tmp_path):
    channels = [_channel(meaning=f"Lead {lead}") for lead in ("I", "II")]
    group = _group(_raw(10, 2), channels, fs=100.0)
    group.NumberOfWaveformSamples = 10 ** 9  # the data is tiny; the header alone is refused
    path = write_dicom_ecg(tmp_path / "huge.dcm", [group])
    with pytest.raises(DataError, match="signal too large: 2,000,000,000 samples") as info:
        read_study(path)
    assert "huge.dcm" in str(info.value)
    small = write_dicom_ecg(tmp_path / "small.dcm", [_group(_raw(10, 2), channels, fs=100.0)])
    with pytest.raises(DataError, match="above the limit of 19"):
        read_study(small, limits=ReadLimits(max_signal_samples=19))
    assert read_study(small, limits=ReadLimits(max_signal_samples=20)).array.shape == (2, 10)


def test_a_non_ecg_waveform_is_refused_by_name(tmp_path):
    channels = [_channel(meaning="Audio")]
    path = write_dicom_ecg(tmp_path / "audio.dcm", [_group(_raw(10, 1), channels, fs=8000.0)],
                           sop_class="1.2.840.10008.5.1.4.1.1.9.4.1")  # basic voice audio
    with pytest.raises(DataError, match="is not an ECG") as info:
        read_study(path)
    assert "audio.dcm" in str(info.value)
