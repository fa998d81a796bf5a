"""Integration: `m3bind demo --quick` end to end (cohort -> pretrain -> bind -> distill -> eval).

Asserts what the method is for: binding lifts cross-modal retrieval between image modalities
above chance and above the unbound models (concept AUC on the paired test set), and keeps each
modality's zero-shot performance close to its pretrained model.
"""
import json

import pytest
from typer.testing import CliRunner

from m3bind.cli import app


# This run measured X-ray <-> ECG concept AUC 0.722 bound vs 0.438 unbound; the margin sits well
# below that lift so the test fails when binding stops aligning concepts, not on noise.
BOUND_AUC_LIFT = 0.15


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

    # Cross-modal retrieval, X-ray <-> ECG (the paper's Table 3 pair): mean concept AUC (chance
    # 0.5; the unbound baseline is a mean over random head draws, so it sits near 0.5 too). The
    # quick cohort has 56 paired patients and a CT model trained on a few dozen volumes, so the CT
    # pairs are noise here; the full demo shows all six pairs (README, "Results").
    def mean_concept_auc(variant, pairs=("xray->ecg", "ecg->xray")):
        return sum(report["retrieval"][variant][p]["concept_auc"] for p in pairs) / len(pairs)
    assert report["retrieval"]["unbound"]["xray->ecg"]["head_draws"] == 10
    assert abs(mean_concept_auc("unbound", tuple(report["retrieval"]["unbound"])) - 0.5) < 0.05
    assert mean_concept_auc("bound") > 0.6
    assert mean_concept_auc("bound") > mean_concept_auc("unbound") + BOUND_AUC_LIFT

    # Zero-shot retention: bound models stay close to their pretrained models on average.
    zs = report["zero_shot"]
    drops = [zs[m]["unbound"]["naive"]["accuracy"] - zs[m]["bound"]["naive"]["accuracy"] for m in zs]
    assert sum(drops) / len(drops) < 0.05

    # The final model loads through the public API and embeds files of every modality.
    from m3bind.api import M3Bind

    model = M3Bind.from_pretrained(out / "model")
    assert sorted(model.modalities) == ["ct", "ecg", "pathology", "retina", "xray"]

    # The demo leaves a search index of the test and paired studies, made with the final model.
    from m3bind.search.index import SearchIndex
    from m3bind.search.model_identity import SearchModel
    from m3bind.search.query import search_text

    index = SearchIndex.open(out / "index")
    hits = search_text(index, SearchModel.load(out / "model"), "moderate cardiomegaly", k=5, per_modality=True)
    assert {hit.study.modality for hit in hits} == {"ct", "ecg", "pathology", "retina", "xray"}
    assert all(len([h for h in hits if h.study.modality == m]) == 5 for m in ("xray", "ecg"))
