"""Integration: `m3bind demo --quick` end to end (cohort -> pretrain -> bind -> distill -> eval).

Asserts what the method is for: binding lifts cross-modal retrieval between image modalities
over the unbound models (concept precision on the paired test set), and keeps each modality's
zero-shot performance close to its phase-one model.
"""
import json

import pytest
from typer.testing import CliRunner

from m3bind.cli import app


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report" / "report.json").read_text())
    for name in ("report.md", "retrieval.png", "embedding_map.png", "fewshot.png"):
        assert (out / "report" / name).exists(), name
    assert set(report["variants"]) == {"unbound", "bound", "m3bind"}
    assert {"naive", "expert", "sampled", "presence"} <= set(report["zero_shot"]["xray"]["unbound"])
    assert "Sampled prompts (xray" in (out / "report" / "report.md").read_text()

    # Text spaces: unrelated before binding, aligned after.
    assert abs(report["text_space"]["unbound"]["agreement"]) < 0.2
    assert report["text_space"]["bound"]["agreement"] > report["text_space"]["unbound"]["agreement"] + 0.3

    # Cross-modal retrieval lift (mean concept precision@10 over the image-image pairs).
    def mean_concept_p10(variant):
        scores = report["retrieval"][variant]
        return sum(s["concept_precision"]["10"] for s in scores.values()) / len(scores)
    assert mean_concept_p10("bound") > mean_concept_p10("unbound") + 0.03

    # Zero-shot retention: bound models stay close to their phase-one models on average.
    zs = report["zero_shot"]
    drops = [zs[m]["unbound"]["naive"]["accuracy"] - zs[m]["bound"]["naive"]["accuracy"] for m in zs]
    assert sum(drops) / len(drops) < 0.05

    # The final model loads through the public API and embeds files of every modality.
    from m3bind.api import M3Bind

    model = M3Bind.from_pretrained(out / "model")
    assert sorted(model.modalities) == ["ct", "ecg", "pathology", "retina", "xray"]
