"""The real-report check: reading the IU report archive's format, mapping MeSH findings to the
X-ray classes, and scoring two text encoders on it (on a small archive written here; the real
one, when torchxrayvision is installed, is checked for its size and classes)."""
import io
import tarfile

import numpy as np
import pytest
import torch

from m3bind.eval.bootstrap import Bootstrap
from m3bind.eval.prompts import load_prompt_file, load_prompt_set
from m3bind.eval.real_reports import read_reports, real_report_check, report_archive
from m3bind.eval.zeroshot import PROTOTYPE_RULES

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{majors}</MeSH></eCitation>"""


def _archive(tmp_path, reports):
    path = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for i, (findings, impression, majors) in enumerate(reports):
            data = REPORT.format(findings=findings, impression=impression,
                                 majors="".join(f"<major>{m}</major>" for m in majors)).encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{i}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


REPORTS = [
    ("The heart is enlarged.", "Cardiomegaly.", ["Cardiomegaly/mild", "Calcified Granuloma"]),
    ("Clear lungs.", "Normal chest.", ["normal"]),
    ("Right effusion.", "Effusion.", ["Pleural Effusion/right"]),
    ("Big heart and effusion.", "Both.", ["Cardiomegaly", "Pleural Effusion"]),     # two classes: left out
    ("Spine.", "Degenerative.", ["Spine/degenerative"]),                             # no class: left out
    ("", "", ["normal"]),                                                            # no text: left out
    ("Lobar opacity.", "Pneumonia.", ["Pneumonia/lower lobe"]),
]


def test_reports_keep_one_class_from_their_mesh_findings(tmp_path):
    reports = read_reports(_archive(tmp_path, REPORTS))
    assert reports == [("Findings: The heart is enlarged. Impression: Cardiomegaly.", "cardiomegaly"),
                       ("Findings: Clear lungs. Impression: Normal chest.", "normal"),
                       ("Findings: Right effusion. Impression: Effusion.", "pleural effusion"),
                       ("Findings: Lobar opacity. Impression: Pneumonia.", "consolidation")]


class _KeywordEncoder:
    """A text encoder that sees only keywords: 'heart' -> axis 0, 'effusion' -> 1 (unless it is
    blind to that word), anything else -> 2."""

    def __init__(self, blind_to_effusion=False):
        self.blind = blind_to_effusion

    def encode_texts(self, texts):
        rows = []
        for text in texts:
            text = text.lower()
            axis = 0 if "heart" in text else 1 if ("effusion" in text and not self.blind) else 2
            rows.append(torch.eye(4)[axis])
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_two_encoders_are_scored_and_compared(tmp_path):
    archive = _archive(tmp_path, REPORTS[:3] * 4)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("classes:\n  normal: [clear lungs]\n  cardiomegaly: [big heart]\n"
                       "  pleural effusion: [effusion]\n")
    result = real_report_check({"bound": _KeywordEncoder(), "m3bind": _KeywordEncoder(blind_to_effusion=True)},
                               load_prompt_file(prompts), PROTOTYPE_RULES["renormalised"], Bootstrap(resamples=50),
                               archive=archive)
    assert result["reports"] == 12 and result["per_class"] == {"normal": 4, "cardiomegaly": 4, "pleural effusion": 4}
    bound, final = result["variants"]["bound"], result["variants"]["m3bind"]
    assert bound["accuracy"] == pytest.approx(1.0)
    # the blind encoder puts effusion reports and prompts with the normal ones: the tie goes to
    # the first class (normal), so the 4 effusion reports are wrong and the rest agree
    assert final["accuracy"] == pytest.approx(2 / 3)
    assert result["agreement"]["share"] == pytest.approx(2 / 3)
    assert result["difference"]["difference"] == pytest.approx(1 / 3)
    assert "CC BY-NC-ND" in result["licence"]


def test_missing_package_is_reported_not_raised(monkeypatch):
    import m3bind.eval.real_reports as real

    monkeypatch.setattr(real, "report_archive", lambda: None)
    result = real.real_report_check({}, load_prompt_set("xray"), PROTOTYPE_RULES["renormalised"], Bootstrap())
    assert "torchxrayvision" in result["skipped"]


@pytest.mark.skipif(report_archive() is None, reason="torchxrayvision is not installed")
def test_the_installed_archive_has_the_iu_reports():
    reports = read_reports(report_archive())
    classes = np.unique([c for _, c in reports], return_counts=True)
    counts = dict(zip(*classes))
    assert len(reports) > 1500 and counts["normal"] > 1000 and counts["cardiomegaly"] > 200
    assert set(counts) == {"normal", "cardiomegaly", "pleural effusion", "lung nodule", "consolidation",
                           "pneumothorax"}


def test_reports_are_mapped_onto_the_users_classes_in_their_spelling(tmp_path):
    """A user's X-ray model knows only its own classes: reports naming other findings are left out,
    a heading spelled like a class wins over the built-in mapping (Pneumonia is 'Pneumonia', not
    consolidation), and ChestX-ray14's 'Effusion' receives the pleural effusion reports."""
    archive = _archive(tmp_path, REPORTS)
    reports = read_reports(archive, ["normal", "Effusion", "Pneumonia", "Consolidation"])
    assert reports == [("Findings: Clear lungs. Impression: Normal chest.", "normal"),
                       ("Findings: Right effusion. Impression: Effusion.", "Effusion"),
                       # 'Big heart and effusion' names one of these classes now: cardiomegaly is not one
                       ("Findings: Big heart and effusion. Impression: Both.", "Effusion"),
                       ("Findings: Lobar opacity. Impression: Pneumonia.", "Pneumonia")]
    # the default is the built-in X-ray classes, as before
    assert [c for _, c in read_reports(archive)] == ["cardiomegaly", "normal", "pleural effusion", "consolidation"]


def test_scored_only_against_the_users_classes_and_skipped_without_two(tmp_path):
    archive = _archive(tmp_path, REPORTS[:3] * 4)
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("classes:\n  normal: [clear lungs]\n  Cardiomegaly: [big heart]\n  Atelectasis: [collapse]\n")
    views = {"bound": _KeywordEncoder(), "m3bind": _KeywordEncoder()}
    result = real_report_check(views, load_prompt_file(prompts), PROTOTYPE_RULES["renormalised"],
                               Bootstrap(resamples=20), archive=archive, classes=["normal", "Atelectasis", "Cardiomegaly"])
    # effusion reports name no class of this model; Atelectasis has no report, so it is not a choice
    assert result["per_class"] == {"normal": 4, "Cardiomegaly": 4}
    assert result["variants"]["bound"]["accuracy"] == pytest.approx(1.0)
    skipped = real_report_check(views, load_prompt_file(prompts), PROTOTYPE_RULES["renormalised"], Bootstrap(),
                                archive=archive, classes=["normal", "Atelectasis"])
    assert "name 1 of the X-ray classes (normal, Atelectasis)" in skipped["skipped"]
