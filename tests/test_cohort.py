"""The synthetic cohort: patient plan and splits, X-ray and CT renderers, files, manifests, preview."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian

from m3bind.cohort import CohortSummary, ct, generate_cohort, write_preview, xray
from m3bind.cohort.conditions import (CONCEPT_MAP, PAIRED_MODALITIES, Study, allocate, chest_layout, evaluation_sizes,
                                      nodule_diameter_mm, plan_cohort)
from m3bind.cohort.writer import MANIFEST_COLUMNS, RENDERERS
from m3bind.data.manifest import read_manifest
from m3bind.data.readers import read_study
from m3bind.data.transforms import build_transform, default_preprocess
from m3bind.errors import ConfigError, DataError
from m3bind.modalities import BUILTIN_MODALITIES

N_SMALL = 48
VOCABULARIES = {name: module.FINDINGS for name, module in RENDERERS.items()}


def rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def study_seed(seed: int, study: Study) -> np.random.SeedSequence:
    """The seed the writer documents for a study."""
    return np.random.SeedSequence([seed, study.seed_index, study.ordinal])


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> tuple[CohortSummary, list[tuple[int, int]]]:
    """A small cohort on two workers, and the progress calls it made."""
    calls: list[tuple[int, int]] = []
    summary = generate_cohort(tmp_path_factory.mktemp("a"), n_patients=N_SMALL, seed=11, workers=2,
                              progress=lambda done, total: calls.append((done, total)))
    return summary, calls


@pytest.fixture(scope="module")
def cohort_a(run_a) -> CohortSummary:
    return run_a[0]


@pytest.fixture(scope="module")
def cohort_b(tmp_path_factory) -> CohortSummary:
    """Same seed as cohort_a, rendered in this process: must be byte-identical."""
    return generate_cohort(tmp_path_factory.mktemp("b"), n_patients=N_SMALL, seed=11, workers=1)


def manifests(summary: CohortSummary) -> dict[str, pd.DataFrame]:
    return {key: pd.read_csv(path, dtype=str, keep_default_na=False) for key, path in summary.manifests.items()}


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_gives_identical_files_whatever_the_worker_count(cohort_a, cohort_b):
    files_a = sorted(p.relative_to(cohort_a.out_dir) for p in cohort_a.out_dir.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(cohort_b.out_dir) for p in cohort_b.out_dir.rglob("*") if p.is_file())
    assert files_a == files_b
    assert len(files_a) > cohort_a.n_studies  # ECG records are two files each
    for rel in files_a:
        if rel.name == "cohort.json":
            continue  # holds the generation time
        assert (cohort_a.out_dir / rel).read_bytes() == (cohort_b.out_dir / rel).read_bytes(), rel


def test_different_seed_gives_different_cohort(cohort_a, tmp_path):
    other = generate_cohort(tmp_path, n_patients=N_SMALL, seed=12, workers=2)
    assert other.manifests["xray"].read_text() != cohort_a.manifests["xray"].read_text()
    first_a = read_study(cohort_a.manifests["ct"].parent / manifests(cohort_a)["ct"].path[0]).array
    first_b = read_study(other.manifests["ct"].parent / manifests(other)["ct"].path[0]).array
    assert np.abs(first_a - first_b).mean() > 10.0  # HU


def test_renderers_are_deterministic_and_keep_the_generator_contract():
    for module in (xray, ct):
        findings = {module.FINDINGS[1]: 0.5}
        assert np.array_equal(module.render(findings, rng(1, 2)), module.render(findings, rng(1, 2)))
        assert module.write_report(findings, rng(1, 2)) == module.write_report(findings, rng(1, 2))
        assert not np.array_equal(module.render(findings, rng(1, 2)), module.render(findings, rng(1, 3)))


def test_progress_is_reported_up_to_the_total(run_a):
    cohort_a, calls = run_a
    assert calls[-1] == (cohort_a.n_studies, cohort_a.n_studies)
    assert [done for done, _ in calls] == list(range(1, cohort_a.n_studies + 1))


# --- patients, groups and splits -----------------------------------------------------------

def test_allocate_splits_exactly_and_proportionally():
    assert allocate(10, {"a": 0.5, "b": 0.3, "c": 0.2}) == {"a": 5, "b": 3, "c": 2}
    parts = allocate(2000, {"x": 0.30, "y": 0.18, "z": 0.52})
    assert sum(parts.values()) == 2000 and parts["x"] == 600 and parts["y"] == 360
    assert sum(allocate(7, {"a": 1, "b": 1, "c": 1}).values()) == 7


def test_plan_matches_the_requested_group_sizes_splits_and_prevalence():
    plan = plan_cohort(2000, seed=5, vocabularies=VOCABULARIES)
    # Training splits keep the sizes 2000 patients give (70 % of each modality's share);
    # validation is at least 5 % of 2000 = 100 (X-ray's 10 % share is 60, so 100 too); every
    # test split has 250 patients and the paired group 640 (128 val).
    train = {"xray": 420, "ecg": 252, "pathology": 196, "retina": 168, "ct": 168}
    assert plan.group_sizes == {**{m: n + 100 + 250 for m, n in train.items()}, "paired": 640}
    studies = pd.DataFrame([{"group": s.group, "modality": s.modality, "split": s.split,
                             "n": len(s.findings), "pid": s.patient_id} for s in plan.studies])
    assert studies.pid.nunique() == sum(plan.group_sizes.values())
    single = studies[studies.group != "paired"]
    counts = single.groupby(["modality", "split"]).size()
    assert counts["xray"].to_dict() == {"train": 420, "val": 100, "test": 250}
    assert counts["ct"].to_dict() == {"train": 168, "val": 100, "test": 250}
    for modality, rows in single.groupby("modality"):
        normal = (rows.n == 0).mean()
        assert 0.28 <= normal <= 0.45, (modality, normal)
        assert (rows.n <= 1).mean() >= 0.7, modality  # most studies have 0 or 1 finding
        assert (rows.n == 2).mean() >= 0.08, modality  # some have two
    paired = studies[studies.group == "paired"]
    assert paired[paired.modality == "xray"].split.value_counts().to_dict() == {"test": 512, "val": 128}
    assert all(sorted(mods) == sorted(PAIRED_MODALITIES) for mods in paired.groupby("pid").modality.apply(list))
    # A patient's three paired studies sit in one split.
    assert (paired.groupby("pid").split.nunique() == 1).all()


def test_evaluation_sizes_can_be_set_and_are_checked():
    plan = plan_cohort(400, seed=0, vocabularies=VOCABULARIES, test_patients=7, paired_patients=10)
    splits = pd.Series([(s.group, s.split) for s in plan.studies if s.modality in ("ct", "retina")]).value_counts()
    assert splits[("retina", "test")] == 7 and splits[("paired", "val")] == 2 and splits[("paired", "test")] == 8
    assert evaluation_sizes(2000) == (250, {"val": 128, "test": 512})
    assert evaluation_sizes(30, paired_patients=2) == (4, {"val": 1, "test": 1})
    with pytest.raises(ValueError, match="paired"):
        evaluation_sizes(30, paired_patients=1)


def test_every_finding_of_every_modality_occurs_and_exclusive_pairs_never_do():
    plan = plan_cohort(600, seed=1, vocabularies=VOCABULARIES)
    for modality, vocabulary in VOCABULARIES.items():
        seen = {label for s in plan.studies if s.modality == modality for label in s.findings}
        assert seen == set(vocabulary), modality
    for s in plan.studies:
        assert not {"adenocarcinoma", "squamous cell carcinoma"} <= set(s.findings)
        assert not {"atrial fibrillation", "sinus bradycardia"} <= set(s.findings)
        assert all(0.0 < v <= 1.0 and round(v, 2) == v for v in s.findings.values())


def test_paired_group_shares_latent_concepts_across_modalities():
    plan = plan_cohort(1000, seed=2, vocabularies=VOCABULARIES)
    by_patient: dict[str, dict[str, Study]] = {}
    for s in plan.studies:
        if s.group == "paired":
            by_patient.setdefault(s.patient_id, {})[s.modality] = s
    with_cardiomegaly = 0
    for studies in by_patient.values():
        xr, ctr, ec = studies["xray"], studies["ct"], studies["ecg"]
        # One latent condition, one severity, visible in every modality that can show it.
        assert xr.findings.get("cardiomegaly") == ctr.findings.get("cardiomegaly") \
            == ec.findings.get("left ventricular hypertrophy")
        assert xr.findings.get("pleural effusion") == ctr.findings.get("pleural effusion")
        assert ctr.findings.get("pericardial effusion") == ec.findings.get("low qrs voltage")
        with_cardiomegaly += "cardiomegaly" in xr.findings
    # Enriched: clearly above the 19 % prevalence of the single-modality groups.
    assert with_cardiomegaly / len(by_patient) > 0.27


# --- files and manifests -------------------------------------------------------------------

def test_manifests_follow_the_interface_and_groups_are_disjoint(cohort_a):
    tables = manifests(cohort_a)
    assert set(tables) == {"xray", "ct", "retina", "pathology", "ecg", "paired/xray", "paired/ct", "paired/ecg"}
    modality_ids: dict[str, set[str]] = {}
    for key, table in tables.items():
        assert tuple(table.columns) == MANIFEST_COLUMNS
        modality = key.split("/")[-1]
        assert (table.modality == modality).all()
        manifest = read_manifest(cohort_a.manifests[key], modality=modality, check_files=True)
        assert len(manifest) == len(table)
        for _, row in table.iterrows():
            assert ".." not in Path(row.path).parts and not Path(row.path).is_absolute()
            labels = [x for x in row.labels.split("|") if x]
            assert set(labels) <= set(RENDERERS[modality].FINDINGS)
            severities = dict(item.split(":") for item in row.severity.split("|") if item)
            assert list(severities) == labels
            for concept in (c for c in row.concepts.split("|") if c):
                assert CONCEPT_MAP[concept][modality] in labels
            assert re.fullmatch(r"P\d{6}", row.patient_id)
        if not key.startswith("paired"):
            modality_ids[key] = set(table.patient_id)
            assert table.patient_id.is_unique
    # No patient in two modality groups (so no id in two training splits), none of them paired.
    paired_ids = set(tables["paired/xray"].patient_id)
    names = list(modality_ids)
    for i, a in enumerate(names):
        assert not modality_ids[a] & paired_ids
        for b in names[i + 1:]:
            assert not modality_ids[a] & modality_ids[b], (a, b)
    assert paired_ids == set(tables["paired/ct"].patient_id) == set(tables["paired/ecg"].patient_id)
    # Paired patients are validation or test patients, never training ones, and a patient's
    # studies share one split.
    for m in PAIRED_MODALITIES:
        assert set(tables[f"paired/{m}"].split) == {"val", "test"}
        assert dict(zip(tables[f"paired/{m}"].patient_id, tables[f"paired/{m}"].split)) == \
            dict(zip(tables["paired/xray"].patient_id, tables["paired/xray"].split))
    assert all(p.startswith("studies/") for p in tables["paired/ecg"].path)


def test_cohort_json_counts_match_the_manifests(cohort_a):
    import json
    info = json.loads((cohort_a.out_dir / "cohort.json").read_text())
    tables = manifests(cohort_a)
    assert info["seed"] == 11 and info["n_patients"] == N_SMALL and info["format_version"] == 1
    for modality in ("xray", "ct", "retina", "pathology", "ecg"):
        assert info["counts"][modality] == tables[modality].split.value_counts().reindex(
            ["train", "val", "test"], fill_value=0).to_dict()
        assert info["modalities"][modality]["findings"] == list(RENDERERS[modality].FINDINGS)
    assert info["paired"]["patients"] == len(tables["paired/xray"])
    assert info["paired"]["splits"] == tables["paired/xray"].split.value_counts().to_dict()
    assert info["total_patients"] == sum(len(t) for key, t in tables.items() if key != "paired/ct" and key != "paired/ecg")
    assert info["concept_map"] == CONCEPT_MAP


def test_xray_dicom_holds_the_rendered_values(cohort_a):
    table = manifests(cohort_a)["xray"]
    plan = plan_cohort(N_SMALL, 11, VOCABULARIES)
    row = table.iloc[0]
    study = next(s for s in plan.studies if s.patient_id == row.patient_id and s.modality == "xray")
    expected = xray.render(study.findings, np.random.default_rng(study_seed(11, study)))
    ds = pydicom.dcmread(cohort_a.manifests["xray"].parent / row.path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsStored == 12 and ds.PatientID == row.patient_id
    assert [float(v) for v in ds.PixelSpacing] == [xray.PIXEL_SPACING_MM] * 2
    assert np.array_equal(ds.pixel_array, expected)
    assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), expected * float(ds.RescaleSlope)
                          + float(ds.RescaleIntercept))
    assert np.array_equal(read_study(cohort_a.manifests["xray"].parent / row.path).array, expected)
    assert row.text == xray.write_report(study.findings, np.random.default_rng(study_seed(11, study)))


def test_ct_nifti_keeps_spacing_and_orientation(cohort_a):
    table = manifests(cohort_a)["paired/ct"]
    plan = plan_cohort(N_SMALL, 11, VOCABULARIES)
    row = table.iloc[0]
    study = next(s for s in plan.studies if s.patient_id == row.patient_id and s.modality == "ct")
    expected = ct.render(study.findings, np.random.default_rng(study_seed(11, study)))
    path = cohort_a.manifests["paired/ct"].parent / row.path
    image = nib.load(path)
    assert image.header.get_zooms() == (2.5, 2.5, 4.0)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), expected)
    study_read = read_study(path)
    assert study_read.meta["spacing"] == ct.SPACING_MM
    assert np.array_equal(study_read.array, expected)


def test_every_built_in_modality_is_rendered_and_its_files_feed_the_demo_transform(cohort_a):
    assert RENDERERS.keys() == BUILTIN_MODALITIES.keys()
    tables = manifests(cohort_a)
    for modality, info in BUILTIN_MODALITIES.items():
        study = read_study(cohort_a.manifests[modality].parent / tables[modality].path.iloc[0])
        assert study.meta["kind"] == info.kind, modality
        spec = default_preprocess(modality, demo=True)
        assert build_transform(modality, spec)(study).shape == spec.output_shape(), modality


def test_generation_rejects_impossible_sizes(tmp_path):
    with pytest.raises(ConfigError, match="n_patients"):
        generate_cohort(tmp_path, n_patients=5)
    with pytest.raises(ConfigError, match="workers"):
        generate_cohort(tmp_path, n_patients=6, workers=0)
    assert not any(tmp_path.iterdir())  # nothing written


def test_generation_refuses_foreign_folders_and_replaces_its_own(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_cohort(tmp_path, n_patients=6, workers=1)
    fresh = tmp_path / "cohort"
    generate_cohort(fresh, n_patients=12, seed=0, workers=1)
    smaller = generate_cohort(fresh, n_patients=6, seed=0, workers=1)
    written = [p for p in fresh.rglob("*") if p.is_file() and p.suffix in (".dcm", ".gz", ".png", ".jpg", ".hea")]
    assert len(written) == smaller.n_studies  # the larger run's files are gone


# --- X-ray renderer ------------------------------------------------------------------------

def test_xray_image_is_a_12_bit_radiograph_with_dark_lungs():
    image = xray.render({}, rng(3))
    assert image.shape == (256, 256) and image.dtype == np.uint16
    assert image.max() <= xray.MAX_STORED and image.max() > 3000
    # Lung fields (mid-height, a quarter of the width in from each side) darker than the spine.
    lungs = np.concatenate([image[100:140, 60:90].ravel(), image[100:140, 166:196].ravel()])
    assert lungs.mean() < 0.6 * image[100:140, 122:134].mean()


def test_xray_cardiothoracic_ratio_measured_from_pixels_follows_cardiomegaly():
    ctr = {key: np.mean([xray.measure_cardiothoracic_ratio(xray.render(findings, rng(7, i))) for i in range(6)])
           for key, findings in (("normal", {}), ("mild", {"cardiomegaly": 0.25}), ("severe", {"cardiomegaly": 0.9}))}
    assert ctr["normal"] < 0.5 < ctr["mild"] < ctr["severe"]
    assert ctr["severe"] - ctr["normal"] > 0.15
    assert ctr["severe"] == pytest.approx(xray.cardiomegaly_ctr(0.9), abs=0.04)


def seeds_with(side_of, wanted: str, count: int) -> list[int]:
    found = [i for i in range(200) if side_of(chest_layout(rng(9, i))) == wanted]
    return found[:count]


@pytest.mark.parametrize("side", ["right", "left"])
def test_xray_effusion_brightens_the_lower_zone_on_its_side(side):
    image_half = slice(0, 128) if side == "right" else slice(128, 256)  # patient's right = image left
    other_half = slice(128, 256) if side == "right" else slice(0, 128)
    for i in seeds_with(lambda layout: layout.effusion_side, side, 3):
        normal = xray.render({}, rng(9, i)).astype(float)
        effusion = xray.render({"pleural effusion": 0.6}, rng(9, i)).astype(float)
        diff = effusion - normal
        assert diff[150:230, image_half].mean() > 150  # stored units, 12-bit
        assert np.abs(diff[:, other_half]).max() == 0  # nothing else changes
        assert diff[:100].max() == 0  # the upper lung is untouched


def test_xray_nodule_is_a_local_bright_blob_of_the_reported_size():
    for i in range(4):
        layout = chest_layout(rng(9, i))
        diff = xray.render({"lung nodule": 0.7}, rng(9, i)).astype(float) - xray.render({}, rng(9, i)).astype(float)
        blob = diff > 100
        radius_px = nodule_diameter_mm(0.7) / xray.PIXEL_SPACING_MM / 2
        assert blob.sum() == pytest.approx(np.pi * radius_px ** 2, rel=0.35)
        rows, cols = np.nonzero(blob)
        assert (cols.mean() < 128) == (layout.nodule_side == "right")
        assert (rows.mean() < 120) == (layout.nodule_zone == "upper")
        assert np.ptp(rows) <= 2 * radius_px + 3 and diff.min() >= 0


def test_xray_consolidation_and_pneumothorax_change_their_side_only():
    for i in range(3):
        layout = chest_layout(rng(9, i))
        normal = xray.render({}, rng(9, i)).astype(float)
        cons = xray.render({"consolidation": 0.8}, rng(9, i)).astype(float) - normal
        ptx = xray.render({"pneumothorax": 0.8}, rng(9, i)).astype(float) - normal
        cons_side = slice(0, 128) if layout.consolidation_side == "right" else slice(128, 256)
        ptx_side = slice(0, 128) if layout.pneumothorax_side == "right" else slice(128, 256)
        assert cons[:, cons_side].sum() >= 0.95 * cons.sum()  # almost all on its side
        assert cons.sum() > 0  # opacity: brighter
        assert ptx[:, ptx_side].sum() < 0 and ptx[:, ptx_side].min() < -300  # lucent rim: darker


# --- CT renderer ---------------------------------------------------------------------------

def soft_tissue_in_chest(volume: np.ndarray, low: float = 20, high: float = 80) -> int:
    """Voxels in an HU range (default: blood/myocardium) in a box around the mediastinum."""
    box = volume[:, 12:100, 15:113]
    return int(((box >= low) & (box <= high)).sum())


def test_ct_volume_has_the_contract_shape_and_plausible_hu():
    volume = ct.render({}, rng(4))
    assert volume.shape == ct.SHAPE and volume.dtype == np.int16
    assert volume[:, 2, 2].mean() < -900  # air outside the patient
    lungs = ct.lung_mask(volume)
    assert 0.08 < lungs.mean() < 0.35
    assert -900 < np.median(volume[lungs]) < -780
    assert (volume > 400).sum() > 2000  # ribs, spine


def test_ct_cardiomegaly_enlarges_the_heart():
    counts = {s: np.mean([soft_tissue_in_chest(ct.render({"cardiomegaly": s} if s else {}, rng(5, i)))
                          for i in range(3)]) for s in (0.0, 0.3, 0.9)}
    assert counts[0.0] < counts[0.3] < counts[0.9]
    # A normal heart is about 4/3 pi 24 x 18 x 13 voxels = 23,500; severe cardiomegaly more than doubles it.
    assert counts[0.9] - counts[0.0] > 15_000


@pytest.mark.parametrize("side", ["right", "left"])
def test_ct_effusion_is_dependent_fluid_on_its_side(side):
    sign = -1 if side == "right" else 1
    for i in seeds_with(lambda layout: layout.effusion_side, side, 2):
        normal = ct.render({}, rng(9, i)).astype(float)
        effusion = ct.render({"pleural effusion": 0.6}, rng(9, i)).astype(float)
        changed = np.abs(effusion - normal) > 150
        z, y, x = np.nonzero(changed)
        assert changed.sum() > 3000
        assert np.all(np.sign(x - 63.5) == sign)  # patient's right = low columns
        assert y.mean() > 64  # posterior (dependent) half
        assert np.bincount(z, minlength=40)[:10].sum() > np.bincount(z, minlength=40)[30:].sum()  # bases
        fluid = effusion[changed & (effusion > -200)]
        assert abs(np.median(fluid) - ct.HU["fluid"]) < 25


def test_ct_emphysema_lowers_lung_density_with_severity():
    index = {s: np.mean([ct.emphysema_index(ct.render({"emphysema": s} if s else {}, rng(6, i)))
                         for i in range(2)]) for s in (0.0, 0.3, 0.9)}
    assert index[0.0] < 0.05 < index[0.3] < index[0.9]
    assert index[0.9] > 0.4
    normal, severe = ct.render({}, rng(6, 0)), ct.render({"emphysema": 0.9}, rng(6, 0))
    assert severe[ct.lung_mask(severe)].mean() < normal[ct.lung_mask(normal)].mean() - 50


def test_ct_nodule_and_pericardial_effusion_are_local_and_sized():
    for i in range(3):
        layout = chest_layout(rng(9, i))
        normal = ct.render({}, rng(9, i)).astype(float)
        diff = ct.render({"lung nodule": 0.6}, rng(9, i)).astype(float) - normal
        z, y, x = np.nonzero(diff > 300)
        radius_mm = nodule_diameter_mm(0.6) / 2
        sphere_voxels = 4 / 3 * np.pi * radius_mm ** 3 / np.prod(ct.SPACING_MM)
        assert len(z) == pytest.approx(sphere_voxels, rel=0.5)
        assert (x.mean() < 64) == (layout.nodule_side == "right")
        assert (z.mean() > 20) == (layout.nodule_zone == "upper")
    for i in range(2):
        normal = ct.render({}, rng(9, i))
        fluid_added = [soft_tissue_in_chest(ct.render({"pericardial effusion": s}, rng(9, i)), -10, 30)
                       - soft_tissue_in_chest(normal, -10, 30) for s in (0.3, 0.9)]
        assert 1500 < fluid_added[0] < fluid_added[1]  # a fluid rim, thicker when severe


# --- reports -------------------------------------------------------------------------------

NEGATION = re.compile(r"\b(no|without|negative for)\b", re.IGNORECASE)


@pytest.mark.parametrize("module", [xray, ct])
def test_reports_negate_absent_findings_and_vary_for_normal_studies(module):
    normal_reports = {module.write_report({}, rng(8, i)) for i in range(20)}
    assert len(normal_reports) >= 10
    abnormal = [module.write_report({module.FINDINGS[0]: 0.5}, rng(8, i)) for i in range(20)]
    assert sum(bool(NEGATION.search(r)) for r in abnormal) >= 12
    assert all(re.search(r"findings:.*impression:", r, re.IGNORECASE) for r in abnormal)


@pytest.mark.parametrize("module", [xray, ct])
def test_report_severity_words_follow_severity(module):
    mild_words = re.compile(r"\b(mild|mildly|slight|slightly|small)\b", re.IGNORECASE)
    severe_words = re.compile(r"\b(severe|severely|marked|markedly|large)\b", re.IGNORECASE)
    for label in ("cardiomegaly", "pleural effusion"):
        for i in range(10):
            mild = module.write_report({label: 0.2}, rng(10, i))
            severe = module.write_report({label: 0.9}, rng(10, i))
            assert mild_words.search(mild) and not severe_words.search(mild), mild
            assert severe_words.search(severe) and not mild_words.search(severe), severe


SIDE_WORDS = re.compile(r"\b(right|left|bilateral|both)\b")


def test_effusion_side_words_in_reports_match_the_layout_and_paired_xray_and_ct_agree():
    for i in range(20):
        layout = chest_layout(rng(6, 1, i))
        expected = {"bilateral"} if layout.effusion_side == "bilateral" else {layout.effusion_side}
        sides = {}
        for module in (xray, ct):
            report = module.write_report({"pleural effusion": 0.5}, rng(6, 1, i))
            sides[module.__name__] = set(SIDE_WORDS.findall(report)) - {"both"}
            assert sides[module.__name__] == expected, report
        assert len(set(map(frozenset, sides.values()))) == 1  # a paired X-ray and CT tell one story


def test_nodule_reports_give_the_rendered_lobe_and_size():
    zone_of = {"upper": "upper", "lower": "lower", "base": "lower", "lung base": "lower"}
    sizes = 0
    for i in range(20):
        layout = chest_layout(rng(6, 2, i))
        for module in (xray, ct):
            report = module.write_report({"lung nodule": 0.5}, rng(6, 2, i))
            places = re.findall(r"\b(right|left) (upper|lower|lung base|base)\b", report)
            assert places, report
            assert {(side, zone_of[zone]) for side, zone in places} == {(layout.nodule_side, layout.nodule_zone)}
            sizes += f"{nodule_diameter_mm(0.5):.0f} mm" in report
    assert sizes >= 25  # most phrasings give the size in mm, always the rendered one


def test_renderers_reject_unknown_findings():
    with pytest.raises(ValueError, match="emphysema"):
        xray.render({"emphysema": 0.5}, rng(1))
    with pytest.raises(ValueError, match="severity"):
        ct.render({"emphysema": 1.5}, rng(1))


# --- preview -------------------------------------------------------------------------------

def test_preview_sheet_is_written_and_shows_every_modality(cohort_a, tmp_path):
    out = write_preview(cohort_a.out_dir, tmp_path / "sheet" / "preview.png")
    with Image.open(out) as image:
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert 900 <= width <= 3000 and 900 <= height <= 3000
    # Five rows of content: each fifth of the sheet has real image content, not blank paper.
    for band in np.array_split(pixels, 5, axis=0):
        assert band.std() > 20
