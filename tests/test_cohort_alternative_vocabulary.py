"""The alternative report vocabulary: wording the standard cohort and the shipped prompts never
use, and a test-only cohort written in it from the same plan as the full cohort."""
import numpy as np
import pandas as pd
import pytest

from m3bind.cohort import generate_cohort
from m3bind.cohort.alternative_vocabulary import PROMPT_PHRASES, REPORT_PHRASES, alternative_report
from m3bind.cohort.conditions import plan_cohort
from m3bind.cohort.writer import RENDERERS
from m3bind.errors import ConfigError
from m3bind.eval.prompts import load_prompt_set

VOCABULARIES = {name: module.FINDINGS for name, module in RENDERERS.items()}


def _standard_reports(n_patients=300, seeds=(0, 1)):
    reports = {m: [] for m in RENDERERS}
    for seed in seeds:
        for study in plan_cohort(n_patients, seed, VOCABULARIES).studies:
            rng = np.random.default_rng(np.random.SeedSequence([seed, study.seed_index, study.ordinal]))
            reports[study.modality].append(RENDERERS[study.modality].write_report(study.findings, rng).lower())
    return reports


def test_alternative_phrases_cover_every_class_and_appear_in_no_standard_report_or_prompt():
    standard = _standard_reports()
    for modality, module in RENDERERS.items():
        classes = {"normal", *module.FINDINGS}
        assert set(REPORT_PHRASES[modality]) == classes == set(PROMPT_PHRASES[modality]), modality
        shipped = load_prompt_set(modality)
        known = " | ".join([*standard[modality], *(d.lower() for ds in shipped.classes.values() for d in ds)])
        for label in classes:
            for phrase in (*REPORT_PHRASES[modality][label], *PROMPT_PHRASES[modality][label]):
                assert phrase.lower() not in known, (modality, label, phrase)
            # reports and prompts do not share a phrase either
            assert not set(REPORT_PHRASES[modality][label]) & set(PROMPT_PHRASES[modality][label])


def test_an_alternative_report_names_each_present_finding():
    rng = np.random.default_rng(0)
    for modality, module in RENDERERS.items():
        finding = module.FINDINGS[0]
        report = alternative_report(modality, module.FINDINGS, {finding: 0.8}, rng)
        assert report.split(":")[0] in ("FINDINGS", "Findings")
        impression = report.split("mpression:" if "mpression:" in report else "MPRESSION:")[1].lower()
        assert any(p in impression for p in REPORT_PHRASES[modality][finding]), report
        normal = alternative_report(modality, module.FINDINGS, {}, rng).lower()
        assert any(p in normal for p in REPORT_PHRASES[modality]["normal"]), normal


def test_a_test_only_alternative_cohort_has_the_full_cohorts_test_studies(tmp_path):
    full = generate_cohort(tmp_path / "full", n_patients=40, seed=3, workers=1, test_patients=4)
    alt = generate_cohort(tmp_path / "alt", n_patients=40, seed=3, workers=1, test_patients=4,
                          report_vocabulary="alternative", test_only=True)
    assert set(alt.manifests) == set(RENDERERS)
    assert not (tmp_path / "alt" / "paired").exists()
    for modality in RENDERERS:
        full_test = pd.read_csv(full.manifests[modality], dtype=str, keep_default_na=False).query("split == 'test'")
        table = pd.read_csv(alt.manifests[modality], dtype=str, keep_default_na=False)
        assert set(table.split) == {"test"} and len(table) == 4
        # same plan, same seeds: the same patients, findings and image files; other reports
        assert table[["patient_id", "labels", "path"]].values.tolist() == \
            full_test[["patient_id", "labels", "path"]].values.tolist()
        assert (tmp_path / "alt" / modality / table.path.iloc[0]).read_bytes() == \
            (tmp_path / "full" / modality / table.path.iloc[0]).read_bytes()
        assert not set(table.text) & set(full_test.text)
    with pytest.raises(ConfigError, match="report_vocabulary"):
        generate_cohort(tmp_path / "bad", n_patients=40, report_vocabulary="klingon")
