"""The report writer: schema validation, report.json round-trip, report.md tables, PNG figures.

The synthetic report mixes hand-written numbers (so the tables can be checked digit by digit)
with the real outputs of classification_metrics, multilabel_metrics, linear_probe and
retrieval_scores (so the schema is checked against what the evaluation actually produces,
int keys included).
"""
from __future__ import annotations

import copy
import functools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m3bind.eval import report_schema
from m3bind.eval.fewshot import linear_probe
from m3bind.eval.metrics import classification_metrics, multilabel_metrics
from m3bind.eval.plots import reduce_to_2d
from m3bind.eval.report import write_report
from m3bind.eval.report_markdown import FIGURE_TITLES, fmt_duration, fmt_number, fmt_percent, md_table, render_markdown
from m3bind.eval.report_schema import ReportError, load_report, report_json_text, to_jsonable, validate_report
from m3bind.eval.retrieval import retrieval_scores

VARIANTS = {"unbound": "phase-one models (baselines)", "bound": "after stage-1 binding",
            "m3bind": "bound image encoders + SESKD student"}
TAB10_BLUE, TAB10_ORANGE, TAB10_GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)


def hand_classification(acc: float, auc: float | None) -> dict:
    """A classification_metrics-shaped dict with chosen numbers (3 classes)."""
    return {"n": 60, "classes": ["normal", "a", "b"], "accuracy": acc, "f1_macro": acc - 0.05,
            "precision_macro": acc - 0.02, "aca": acc - 0.01, "auc_macro": auc, "chance": 1 / 3,
            "majority_rate": 0.4, "recall_per_class": {"normal": 0.5, "a": 0.4, "b": None}}


def hand_retrieval(r1: float, r5: float, r10: float) -> dict:
    return {"recall": {"1": r1, "5": r5, "10": r10}, "recall_chance": {"1": 0.02, "5": 0.1, "10": 0.2},
            "concept_precision": {"1": r1 + 0.3, "5": r5 + 0.1, "10": r10 + 0.05}, "concept_chance": 0.25,
            "concept_auc": r10 + 0.1, "queries": 50, "gallery": 50}


@functools.cache
def _real_outputs() -> dict:
    """Outputs of the real metric functions on small random data (computed once: about 0.7 s)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=40)
    scores = rng.normal(size=(40, 3)) + 2.0 * np.eye(3)[y]
    truth = rng.integers(0, 2, size=(40, 4))
    probs = np.clip(0.5 * truth + rng.uniform(size=(40, 4)) * 0.6, 0, 1)
    train_emb = rng.normal(size=(30, 8)) + np.eye(3, 8)[np.arange(30) % 3] * 3
    test_emb = rng.normal(size=(30, 8)) + np.eye(3, 8)[np.arange(30) % 3] * 3
    probe = linear_probe(train_emb, np.arange(30) % 3, test_emb, np.arange(30) % 3, shots=[1, 2, 4],
                         seeds=[0, 1], classes=["normal", "a", "b"])
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(20, 16, generator=gen), dim=1)
    g = torch.nn.functional.normalize(q + 0.5 * torch.randn(20, 16, generator=gen), dim=1)
    ids = [f"p{i}" for i in range(20)]
    concepts = [frozenset({"af"}) if i % 2 else frozenset() for i in range(20)]
    return {"classification": classification_metrics(y, scores, ["normal", "af", "lvh"]),
            "presence": multilabel_metrics(truth, probs, classes=["w", "x", "y", "z"]),
            "probe": probe,
            "retrieval": retrieval_scores(q, g, ids, ids, concepts, concepts, ks=(1, 5, 10))}


def real_outputs() -> dict:
    """A fresh copy of the real outputs, so a test may change it."""
    return copy.deepcopy(_real_outputs())


def bare_shots(acc_1: float, acc_5: float) -> dict:
    """A few-shot result as the bare {k: result} mapping (no "shots" wrapper, no classes)."""
    return {"1": {"n_train": 3, "mean": {"accuracy": acc_1, "f1_macro": 0.4},
                  "std": {"accuracy": 0.05, "f1_macro": 0.01}, "per_seed": {"accuracy": [acc_1 - 0.05, acc_1 + 0.05]},
                  "short_classes": {}},
            "5": {"n_train": 14, "mean": {"accuracy": acc_5, "f1_macro": None},
                  "std": {"accuracy": 0.0, "f1_macro": None}, "short_classes": {"b": 4}}}


def make_report() -> dict:
    real = real_outputs()
    return {
        "m3bind_version": "0.1.0", "created": "2025-03-01T10:20:30", "command": "m3bind demo --out x",
        "seconds": 125.0, "modalities": ["xray", "ecg"], "variants": dict(VARIANTS),
        "zero_shot": {
            "xray": {"unbound": {"naive": hand_classification(0.3111, 0.6), "expert": hand_classification(0.35, None),
                                 "presence": None},
                     "bound": {"naive": hand_classification(0.41, 0.7), "expert": hand_classification(0.45, 0.72),
                               "presence": None},
                     "m3bind": {"naive": hand_classification(0.48, 0.75), "expert": hand_classification(0.52, 0.8),
                                "presence": None}},
            "ecg": {v: {"naive": real["classification"], "expert": real["classification"],
                        "presence": real["presence"] if v == "m3bind" else None} for v in VARIANTS},
        },
        "few_shot": {"xray": {v: real["probe"] for v in VARIANTS},
                     "ecg": {"unbound": bare_shots(0.4, 0.6), "bound": bare_shots(0.5, 0.725),
                             "m3bind": bare_shots(0.6, 0.8)}},
        "retrieval": {v: {"xray->ecg": hand_retrieval(0.1234 + i / 10, 0.4567, 0.6), "ecg->xray": real["retrieval"]}
                      for i, v in enumerate(VARIANTS)},
        "text_to_image": {v: {"xray": hand_retrieval(0.2, 0.5, 0.7), "ecg": hand_retrieval(0.15, 0.45, 0.65)}
                          for v in VARIANTS},
        "text_space": {"unbound": {"agreement": 0.0312, "text_recall": 0.01},
                       "bound": {"agreement": 0.8766, "text_recall": float("nan")}},
        "ablations": {"modalities": [
            {"setting": {"modalities": ["xray", "ecg"], "amb": True, "seskd": False},
             "retrieval": {"xray->ecg": hand_retrieval(0.05, 0.2, 0.3)}, "zero_shot": {"xray": 0.61}},
            {"setting": {"modalities": ["xray", "ecg", "ct"], "amb": False, "seskd": True},
             "retrieval": {"xray->ecg": {**hand_retrieval(0.07, 0.25, 0.35), "concept_auc_ci": [0.4, 0.5]}},
             "zero_shot": {"xray": {"naive": 0.5, "expert": 0.6}}},
        ]},
        "notes": ["Synthetic cohort: numbers are not comparable with the paper's."],
    }


def make_embeddings(n: int = 200) -> dict:
    """'before': one blob per modality; 'after': modalities mixed. 12 concepts (> 10 colours)."""
    rng = np.random.default_rng(1)
    modality = ["xray" if i % 2 else "ecg" for i in range(n)]
    concept = [f"c{i % 12}" for i in range(n)]
    offset = np.array([[8.0 if m == "xray" else -8.0] + [0.0] * 31 for m in modality])
    return {"before": {"emb": rng.normal(size=(n, 32)) + offset, "modality": modality, "concept": concept},
            "after": {"emb": rng.normal(size=(n, 32)), "modality": modality, "concept": concept}}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = make_report()
    paths = write_report(report, out, embeddings=make_embeddings())
    return report, out, paths


def test_every_file_is_written(written):
    _, out, paths = written
    assert set(paths) == {"report.json", "report.md", "fewshot.png", "retrieval.png", "text_to_image.png",
                          "embedding_map.png"}
    for name, path in paths.items():
        assert path == out / name and path.stat().st_size > 0
    # Nothing else: no temporary file of the atomic writes is left behind (they are hidden files).
    assert sorted(p.name for p in out.iterdir()) == sorted(paths)


def test_report_json_round_trips_and_validates(written):
    report, out, _ = written
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data == validate_report(report).model_dump(mode="json")
    assert load_report(out / "report.json").model_dump(mode="json") == data
    # Numbers are stored unrounded; K keys of the real retrieval output (ints) became strings.
    assert data["retrieval"]["bound"]["xray->ecg"]["recall"]["1"] == pytest.approx(0.2234)
    assert set(data["retrieval"]["m3bind"]["ecg->xray"]["recall"]) == {"1", "5", "10"}
    # The real linear_probe output keeps its int shot keys as strings; a bare {k: result} is wrapped.
    assert set(data["few_shot"]["xray"]["bound"]["shots"]) == {"1", "2", "4"}
    assert data["few_shot"]["ecg"]["bound"]["shots"]["5"]["short_classes"] == {"b": 4}
    # NaN is written as null (strict JSON), extra leaf keys are kept.
    assert data["text_space"]["bound"]["text_recall"] is None
    assert data["zero_shot"]["xray"]["bound"]["naive"]["recall_per_class"]["b"] is None
    assert "NaN" not in (out / "report.json").read_text(encoding="utf-8")


def test_written_report_round_trips_through_the_schema(written):
    """Loading report.json and writing it again gives the same bytes, and the same report.md."""
    _, out, _ = written
    loaded = load_report(out / "report.json")
    assert report_json_text(loaded) == (out / "report.json").read_text(encoding="utf-8")
    all_drawn = {name: None for name in FIGURE_TITLES}
    assert render_markdown(loaded, all_drawn) == (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("change, message", [
    (lambda r: r["few_shot"]["ecg"]["bound"]["shots"]["5"].pop("n_train"),
     r"few_shot\.ecg\.bound\.shots\.5\.n_train: Field required"),
    (lambda r: r.__setitem__("zero_shots", r.pop("zero_shot")),
     r"(?s)zero_shot: Field required.*zero_shots: Extra inputs are not permitted"),
    (lambda r: r["retrieval"]["m3bind"]["ecg->xray"].__setitem__("queries", "many"),
     r"retrieval\.m3bind\.ecg->xray\.queries: Input should be a valid integer"),
])
def test_loading_a_malformed_report_json_names_the_file_and_the_problem(written, tmp_path, change, message):
    _, out, _ = written
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ReportError, match="^" + re.escape(f"{path}: invalid report:\n")) as error:
        load_report(path)
    assert re.search(message, str(error.value)), str(error.value)


def test_loading_a_truncated_or_missing_report_json_is_a_report_error(written, tmp_path):
    _, out, _ = written
    path = tmp_path / "report.json"
    path.write_text((out / "report.json").read_text(encoding="utf-8")[:500], encoding="utf-8")
    with pytest.raises(ReportError, match="^" + re.escape(f"{path}: not a JSON report")):
        load_report(path)
    with pytest.raises(ReportError, match=r"absent\.json: cannot read the report \(No such file"):
        load_report(tmp_path / "absent.json")


@pytest.mark.parametrize("section", ["zero_shot", "few_shot", "retrieval", "text_to_image", "text_space",
                                     "variants", "notes"])
def test_missing_section_is_named(section):
    report = make_report()
    del report[section]
    with pytest.raises(ReportError, match=rf"(?m)^  {section}: Field required"):
        validate_report(report)


def test_a_run_without_a_paired_set_says_what_retrieval_needs():
    report = make_report()
    report["retrieval"] = {variant: {} for variant in report["retrieval"]}
    markdown = render_markdown(validate_report(report), {})
    section = markdown.split("## Cross-modal retrieval (Table 3 style)")[1].split("\n## ")[0]
    assert "No cross-modal retrieval results in this run" in section
    assert "`paired_manifests`" in section and "`patient_id`" in section


def test_ablations_are_optional():
    report = make_report()
    del report["ablations"]
    assert validate_report(report).ablations is None


@pytest.mark.parametrize("change, message", [
    (lambda r: r["few_shot"]["ecg"]["bound"]["5"].pop("n_train"), r"few_shot\.ecg\.bound\.shots\.5\.n_train: Field required"),
    (lambda r: r["zero_shot"]["xray"]["bound"]["naive"].pop("accuracy"), r"zero_shot\.xray\.bound\.naive\.accuracy"),
    (lambda r: r.__setitem__("retreival", {}), r"retreival: Extra inputs are not permitted"),
    (lambda r: r["retrieval"].__setitem__("student", {}), r"retrieval: variant \['student'\] not listed in 'variants'"),
    (lambda r: r["retrieval"]["bound"].__setitem__("xray-ecg", hand_retrieval(0.1, 0.2, 0.3)), r"query->gallery"),
    (lambda r: r["retrieval"]["bound"].__setitem__("xray->ct", hand_retrieval(0.1, 0.2, 0.3)),
     r"retrieval\.bound\.xray->ct: modality \['ct'\] not listed in 'modalities'"),
    (lambda r: r["text_to_image"]["bound"]["xray"]["recall"].__setitem__("top1", 0.3), r"K keys must be positive"),
    (lambda r: r.__setitem__("created", "yesterday"), r"created: created must be an ISO 8601 time"),
    (lambda r: r.__setitem__("seconds", -1.0), r"seconds: Input should be greater than or equal to 0"),
])
def test_invalid_reports_name_the_problem(change, message):
    report = make_report()
    change(report)
    with pytest.raises(ReportError, match=message):
        validate_report(report)


def test_invalid_report_writes_nothing(tmp_path):
    report = make_report()
    del report["text_space"]
    with pytest.raises(ReportError):
        write_report(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_markdown_header_and_zero_shot_table(written):
    _, out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "- command: `m3bind demo --out x`" in md
    assert "- run time: 2 min 05 s" in md
    assert "- modalities: xray, ecg" in md
    assert "| m3bind | bound image encoders + SESKD student |" in md
    xray = md.split("### xray", 1)[1].split("###", 1)[0]
    # naive: acc, F1 = acc-0.05, prec = acc-0.02, AUC; expert: ... ACA = acc-0.01; null AUC prints "–".
    assert "| unbound | 0.311 | 0.261 | 0.291 | 0.600 | 0.350 | 0.300 | 0.330 | – | 0.340 |" in xray
    assert "| *chance* | 0.333 | – | – | 0.500 | 0.333 | – | – | 0.500 | 0.333 |" in xray
    rows = [line.split(" | ")[0] for line in xray.splitlines() if line.startswith("| ") and "variant" not in line]
    assert rows == ["| unbound", "| bound", "| m3bind", "| *chance*"]
    assert "60 test studies; 3 classes (normal, a, b); always answering the most frequent class scores 0.400" in xray
    # The presence block appears for ecg (only m3bind has one), with its real numbers.
    ecg = md.split("### ecg", 1)[1].split("## Few-shot", 1)[0]
    real = real_outputs()["presence"]
    assert (f"| m3bind | {real['auc_macro']:.3f} | {real['f1_macro']:.3f} | {real['accuracy_macro']:.3f} | "
            f"{real['precision_macro']:.3f} |") in ecg
    assert "| bound | " not in ecg.split("Presence", 1)[1]


def test_zero_shot_size_line_says_how_many_multi_finding_studies_only_presence_scores(tmp_path):
    report = make_report()
    presence = {**real_outputs()["presence"], "n": 75}
    report["zero_shot"]["xray"]["m3bind"]["presence"] = presence
    write_report(report, tmp_path, embeddings=make_embeddings())
    xray = (tmp_path / "report.md").read_text(encoding="utf-8").split("### xray", 1)[1].split("###", 1)[0]
    assert ("60 test studies of 75 (the 15 with several findings are scored only in the presence table); "
            "3 classes (normal, a, b)") in xray


def test_markdown_few_shot_table(written):
    _, out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("## Few-shot", 1)[1].split("## Cross-modal", 1)[0]
    ecg = section.split("### ecg", 1)[1]
    assert "| variant | 1-shot | 5-shot |" in ecg
    assert "| bound | 50.0 ± 5.0 | 72.5 ± 0.0 |" in ecg
    assert "_5-shot: classes with fewer than 5 training studies (all used): b (4)._" in ecg
    xray = section.split("### xray", 1)[1].split("### ecg", 1)[0]
    probe = real_outputs()["probe"]["shots"]
    expected = " | ".join(fmt_percent(probe[k]["mean"]["accuracy"], probe[k]["std"]["accuracy"]) for k in (1, 2, 4))
    assert f"| m3bind | {expected} |" in xray
    assert "| *chance* | 33.3 | 33.3 | 33.3 |" in xray
    assert "training studies per seed: 1-shot: 3, 2-shot: 6, 4-shot: 12; 30 test studies; 2 seeds" in xray


def test_markdown_retrieval_tables(written):
    _, out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("## Cross-modal retrieval", 1)[1].split("## Text -> image", 1)[0]
    assert "| pair | variant | R@1 | R@5 | R@10 | concept P@1 | concept P@5 | concept P@10 | concept AUC | queries | gallery |" in section
    assert "| xray->ecg | bound | 0.223 | 0.457 | 0.600 | 0.523 | 0.557 | 0.650 | 0.700 | 50 | 50 |" in section
    assert "| xray->ecg | *chance* | 0.020 | 0.100 | 0.200 | 0.250 | 0.250 | 0.250 | 0.500 | 50 | 50 |" in section
    real = real_outputs()["retrieval"]
    assert f"| ecg->xray | unbound | {real['recall'][1]:.3f} | {real['recall'][5]:.3f} |" in section
    assert "| ecg->xray | *chance* | 0.050 | 0.250 | 0.500 |" in section   # K / 20 gallery studies
    text = md.split("## Text -> image", 1)[1].split("## Agreement", 1)[0]
    assert "| text->ecg | m3bind | 0.150 | 0.450 | 0.650 |" in text
    agreement = md.split("## Agreement", 1)[1].split("##", 1)[0]
    assert "| unbound | 0.031 | 0.010 |" in agreement
    assert "| bound | 0.877 | – |" in agreement
    assert "| m3bind |" not in agreement


def test_markdown_ablation_table_with_check_marks(written):
    _, out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    section = md.split("## Ablations", 1)[1].split("## Figures", 1)[0]
    assert ("| xray | ecg | ct | amb | seskd | xray->ecg R@1 | xray->ecg R@5 | xray->ecg R@10 | "
            "xray->ecg concept AUC | xray zero-shot acc | xray zero-shot naive | xray zero-shot expert |") in section
    assert "| ✓ | ✓ |  | ✓ |  | 0.050 | 0.200 | 0.300 | 0.400 | 0.610 | – | – |" in section
    # an interval, when the row has one, is printed beside the concept AUC
    assert "| ✓ | ✓ | ✓ |  | ✓ | 0.070 | 0.250 | 0.350 | 0.450 (0.400–0.500) | – | 0.500 | 0.600 |" in section


def test_markdown_links_figures_and_notes(written):
    _, out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in ("fewshot.png", "retrieval.png", "text_to_image.png", "embedding_map.png"):
        assert f"]({name})" in md
    assert "skipped" not in md
    assert md.rstrip().endswith("- Synthetic cohort: numbers are not comparable with the paper's.")


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(pixels - np.array(rgb)).sum(-1) < 12).sum())


def test_pngs_are_real_figures(written):
    _, _, paths = written
    for name in ("fewshot.png", "retrieval.png", "text_to_image.png", "embedding_map.png"):
        pixels = _pixels(paths[name])
        height, width, _ = pixels.shape
        assert 300 <= width <= 3000 and 300 <= height <= 3000, (name, width, height)
        assert pixels.std() > 10, name
    # Three variants -> three tab10 colours, far more of each than the legend alone holds (~150
    # pixels): three distinct ecg curves, and the bars.
    for name, least in (("fewshot.png", 400), ("retrieval.png", 3000)):
        pixels = _pixels(paths[name])
        for colour in (TAB10_BLUE, TAB10_ORANGE, TAB10_GREEN):
            assert _has_colour(pixels, colour) > least, (name, colour)
    # Two stages -> two rows of panels: the map is about twice as tall as a single-stage map.
    assert _pixels(paths["embedding_map.png"]).shape[0] > 900


def test_embedding_map_single_stage_and_bad_input(tmp_path):
    from m3bind.eval.plots import plot_embedding_map

    after_only = {"after": make_embeddings()["after"]}
    height = _pixels(plot_embedding_map(after_only, tmp_path / "one.png")).shape[0]
    assert 400 < height < 600
    broken = {"before": {**make_embeddings()["before"], "concept": ["x"] * 3}}
    with pytest.raises(ValueError, match="200 embeddings but 200 modality and 3 concept labels"):
        plot_embedding_map(broken, tmp_path / "bad.png")


def test_plots_skipped_cleanly_without_data(tmp_path):
    report = make_report()
    report["few_shot"] = {"xray": {}}
    (tmp_path / "fewshot.png").write_bytes(b"left over from an earlier run")
    paths = write_report(report, tmp_path)
    assert set(paths) == {"report.json", "report.md", "retrieval.png", "text_to_image.png"}
    assert not (tmp_path / "fewshot.png").exists()
    assert not (tmp_path / "embedding_map.png").exists()
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "- Few-shot curves (paper Figure 3): skipped (no few-shot results)." in md
    assert "skipped (no embeddings were passed)." in md
    assert "_No few-shot results in this run._" in md
    assert "](fewshot.png)" not in md


def test_reduce_to_2d_keeps_separated_groups_apart():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 64))
    emb[:100, 0] += 20.0
    coords, method = reduce_to_2d(emb)
    assert method == "t-SNE" and coords.shape == (200, 2)
    a, b = coords[:100], coords[100:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    spread = max(a.std(0).max(), b.std(0).max())
    assert gap > 3 * spread
    # Above the t-SNE limit only PCA runs: the first axis is the separating direction.
    coords, method = reduce_to_2d(emb, tsne_max_n=100)
    assert method == "PCA"
    assert abs(np.corrcoef(coords[:, 0], emb[:, 0])[0, 1]) > 0.99


def test_formatting_helpers():
    assert fmt_number(None) == "–"
    assert fmt_number(0.12345) == "0.123"
    assert fmt_number(1) == "1.000"
    assert fmt_percent(0.853, 0.012) == "85.3 ± 1.2"
    assert fmt_percent(0.5) == "50.0"
    assert fmt_percent(None, 0.1) == "–"
    assert fmt_duration(42.04) == "42.0 s"
    assert fmt_duration(125) == "2 min 05 s"
    assert fmt_duration(3725) == "1 h 02 min"
    assert md_table(["a", "b"], [["x|y", "1"]]) == ["| a | b |", "|---|---|", "| x\\|y | 1 |"]


def test_to_jsonable_converts_what_json_cannot_hold():
    value = {1: np.float32(0.5), "t": (np.int64(3), float("inf")), "a": np.array([1.0, math.nan]),
             "x": torch.tensor(0.25)}
    assert to_jsonable(value) == {"1": 0.5, "t": [3, None], "a": [1.0, None], "x": 0.25}
    with pytest.raises(ReportError, match=r"report\.k: set cannot be written"):
        to_jsonable({"k": {1, 2}})
    with pytest.raises(ReportError, match="key"):
        to_jsonable({("xray", "ecg"): 1.0})


def test_every_schema_field_is_documented():
    """Each field of each report.json model is named in docs/report-schema.md (`sampled` once was not)."""
    doc = (Path(__file__).parents[1] / "docs" / "report-schema.md").read_text(encoding="utf-8")
    models = [report_schema.Report, report_schema.ZeroShotEntry, report_schema.ClassificationScores,
              report_schema.PresenceScores, report_schema.FewShotResult, report_schema.ShotResult,
              report_schema.RetrievalScores, report_schema.TextSpaceScores, report_schema.AblationRow,
              report_schema.Difference]
    undocumented = [f"{model.__name__}.{field}" for model in models for field in model.model_fields
                    if f"`{field}`" not in doc and f'"{field}"' not in doc]
    assert not undocumented


def test_minimal_report_in_the_docs_is_valid(tmp_path):
    """The example in docs/report-schema.md validates and renders (the doc cannot drift)."""
    doc = (Path(__file__).parents[1] / "docs" / "report-schema.md").read_text(encoding="utf-8")
    example = doc.split("## A minimal valid report", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    paths = write_report(json.loads(example), tmp_path)
    assert set(paths) == {"report.json", "report.md", "retrieval.png"}
    md = paths["report.md"].read_text(encoding="utf-8")
    assert "| m3bind | 0.410 | 0.360 | 0.390 | 0.700 | – | – | – | – | – |" in md
    assert "| xray->ecg | *chance* | 0.020 | – | – | 50 | 50 |" in md
