"""The evaluation protocol end to end on a tiny cohort and tiny built-in models: choices made on
validation only, baselines a user could run without binding (chaining, the lambda = 0 control)
beside chance, intervals on every headline number, paired differences, the student check on a
second cohort, and the prompt and concept fallbacks for a user's own data."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from m3bind.config import parse_config
from m3bind.eval import protocol
from m3bind.eval.protocol import (chaining_profiles, choose_chaining_profile, choose_prototype_rule,
                                  modality_zero_shot, retrieval_pairs)
from m3bind.eval.retrieval import embedding_query_scores
from m3bind.experiment import Experiment
from m3bind.stages.artifacts import load_bound

TEXT_TOWER = {"text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "text_intermediate_size": 32,
              "native_dim": 8, "vocab_size": 120}
MODALITIES = ("xray", "ct", "ecg")


def _config(root: Path, output: str, **eval_settings) -> dict:
    return {
        "seed": 0, "output_dir": str(root / output), "shared_dim": 16, "demo_sizes": True,
        "modalities": {m: {"manifest": str(root / "cohort" / m / "manifest.csv"),
                           "model": {"options": {"width": 4, "depth": 1, **TEXT_TOWER}},
                           **({"preprocess": {"normalize": "none"}} if m == "ecg" else {})} for m in MODALITIES},
        "paired_manifests": {m: str(root / "cohort" / "paired" / f"{m}.csv") for m in MODALITIES},
        "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0, "augment": False},
        "bind": {"steps": 3, "image_batch_size": 4, "text_batch_size": 8, "warmup_steps": 1, "lr": 1.0e-3,
                 "lambda_text": 100.0},
        "distill": {"kd_steps": 2, "contrastive_steps": 2, "batch_size": 4},
        "eval": {"shots": [1], "seeds": [0], "bootstrap_resamples": 50, "lambda0_control": True,
                 "student_check": {"enabled": True, "patients": 30, "test_patients": 6},
                 "real_reports": False, **eval_settings},  # the real-report check: tests/test_real_reports.py
        "data": {"workers": 0},
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny cohort, pretrain -> bind -> distill -> evaluate (control and student check included)."""
    from m3bind.cohort import generate_cohort
    from m3bind.stages import run_bind, run_distill, run_eval, run_pretrain

    root = tmp_path_factory.mktemp("protocol")
    generate_cohort(root / "cohort", n_patients=40, seed=0, workers=1, test_patients=12, paired_patients=30)
    exp = Experiment(parse_config(_config(root, "run")))
    run_pretrain(exp, log=lambda _: None)
    run_bind(exp, log=lambda _: None)
    run_distill(exp, log=lambda _: None)
    report = run_eval(exp, command="test", log=lambda _: None)
    return root, exp, report


def test_report_has_baselines_control_and_intervals(run):
    _, exp, report = run
    assert list(report["variants"]) == ["unbound", "random_heads", "chaining", "control", "bound", "m3bind"]
    pairs = [f"{q}->{g}" for q, g in retrieval_pairs(exp)]
    for variant in ("random_heads", "chaining", "control", "bound", "m3bind"):
        assert sorted(report["retrieval"][variant]) == sorted(pairs), variant
        for scores in report["retrieval"][variant].values():
            assert scores["queries"] == 24  # the paired test patients (30 paired: 6 val, 24 test)
            if scores["concept_auc"] is not None:
                low, high = scores["concept_auc_ci"]
                assert low <= scores["concept_auc"] <= high
            low, high = scores["recall_ci"]["1"]
            assert low <= scores["recall"]["1"] <= high
    assert report["retrieval"]["random_heads"]["xray->ecg"]["head_draws"] == protocol.RANDOM_HEAD_DRAWS
    for m in MODALITIES:
        assert set(report["zero_shot"][m]) == {"unbound", "control", "bound", "m3bind"}
        expert = report["zero_shot"][m]["bound"]["expert"]
        low, high = expert["accuracy_ci"]
        assert low <= expert["accuracy"] <= high
        assert set(report["zero_shot"][m]["bound"]["expert_by_rule"]) == {"mean+name", "mean", "renormalised+name",
                                                                         "renormalised"}
    assert report["text_space"]["control"]["agreement"] is not None
    # Few-shot probes ran for every modality, or the report says why not (a training split whose
    # single-label studies show one class: possible in this 40-patient cohort).
    for m in MODALITIES:
        skipped = [n for n in report["notes"] if n.startswith(f"{m}: few-shot probes skipped")]
        assert (m in report["few_shot"]) != bool(skipped), m
    protocol_info = report["protocol"]
    assert protocol_info["tuning_split"] == "val" and protocol_info["report_split"] == "test"
    assert protocol_info["prototype_choice"]["chosen"] == protocol_info["prototype_rule"]
    assert set(protocol_info["prototype_choice"]["validation"]) == {"unbound", "control", "bound", "m3bind"}
    assert protocol_info["chaining"]["chosen"] in ("standardised", "raw")


def test_each_trained_variant_ranks_retrieval_by_the_similarity_chosen_on_validation(run):
    from m3bind.stages.evaluate import load_variants

    _, exp, report = run
    choices = report["protocol"]["retrieval_similarity"]
    assert set(choices) == {"control", "bound", "m3bind"}
    variants = load_variants(exp, list(exp.modalities))
    pairs = retrieval_pairs(exp)
    for variant, choice in choices.items():
        table = choice["validation_concept_auc"]
        assert choice["validated"] and list(table) == list(protocol.RETRIEVAL_SIMILARITIES)
        for similarity, value in table.items():  # recomputed from the validation split
            aucs = [s.summary()["concept_auc"] for s in
                    protocol.paired_query_scores(exp, variants[variant], pairs, "val", similarity).values()]
            assert value == pytest.approx(sum(a for a in aucs if a is not None) / len([a for a in aucs if a is not None]))
        best = max(table.values())
        assert table[choice["chosen"]] == best
        assert choice["chosen"] == "cosine" or table["cosine"] < best  # cosine wins ties
        # The test split's table is that similarity's numbers.
        test = protocol.paired_query_scores(exp, variants[variant], pairs, "test", choice["chosen"])
        for pair, scores in test.items():
            expected = scores.summary()["concept_auc"]
            reported = report["retrieval"][variant][pair]["concept_auc"]
            assert reported == (None if expected is None else pytest.approx(expected)), (variant, pair)
    # The choice hands on the centres it compared with, for the test tables to reuse.
    trained = {v: variants[v] for v in ("control", "bound")}
    again, centres = protocol.choose_retrieval_similarity(exp, trained, pairs)
    assert again == {v: choices[v] for v in trained} and set(centres) == set(trained)
    for variant, by_modality in centres.items():
        expected = protocol.modality_centres(exp, variants[variant], {m for pair in pairs for m in pair})
        assert set(by_modality) == set(expected)
        for m, centre in by_modality.items():
            assert torch.equal(centre, expected[m])
    with pytest.raises(ValueError, match="unknown retrieval similarity 'dot'"):
        protocol.paired_query_scores(exp, variants["bound"], pairs, "val", "dot")


def test_the_final_model_carries_its_retrieval_similarity_and_the_report_measures_it(run):
    from m3bind.models.bound import M3Bind
    from m3bind.stages.artifacts import model_dir

    root, exp, report = run
    final = M3Bind.from_pretrained(model_dir(exp))
    choice = report["protocol"]["retrieval_similarity"]["m3bind"]
    assert choice["from_model"] and choice["chosen"] == final.retrieval_similarity
    assert choice["validation_concept_auc"] == final.retrieval_validation
    assert final.retrieval_validation[final.retrieval_similarity] == max(final.retrieval_validation.values())
    views = {m: final.view(m) for m in final.modalities}
    pairs = retrieval_pairs(exp)
    test = protocol.paired_query_scores(exp, views, pairs, "test", final.retrieval_similarity, final.centres or None)
    for pair, scores in test.items():
        expected = scores.summary()["concept_auc"]
        assert report["retrieval"]["m3bind"][pair]["concept_auc"] == (None if expected is None
                                                                       else pytest.approx(expected))
    # Set to 'centred' (here by the config), a model gets every modality's mean training embedding.
    fixed = Experiment(parse_config(_config(root, "run", retrieval_similarity="centred")))
    assert protocol.choose_model_similarity(fixed, final, pairs, log=lambda _: None)["chosen"] == "centred"
    assert set(final.centres) == set(MODALITIES)
    expected = protocol.modality_centres(fixed, views, MODALITIES)
    for m in MODALITIES:
        assert torch.allclose(final.centres[m], expected[m], atol=1e-6)
        train = torch.nn.functional.normalize(protocol.embed_images(views[m].encode_image,
                                                                     fixed.studies(m, "train").images), dim=-1)
        assert torch.allclose(final.centres[m], train.mean(0), atol=1e-5)  # fewer than 2,000: every study


def test_a_configured_retrieval_similarity_is_used_for_every_variant_without_choosing(run):
    from m3bind.stages.evaluate import load_variants

    root, exp, _ = run
    fixed = Experiment(parse_config(_config(root, "run", retrieval_similarity="centred")))
    choices, centres = protocol.choose_retrieval_similarity(fixed, load_variants(fixed, list(fixed.modalities)),
                                                            retrieval_pairs(fixed))
    assert choices == {v: {"chosen": "centred", "configured": True} for v in ("control", "bound", "m3bind")}
    assert centres == {}  # nothing was compared, so nothing centred yet


def test_differences_are_paired_and_name_the_best_baseline(run):
    _, _, report = run
    claims = {(d["claim"], d["where"], d["metric"]) for d in report["differences"]}
    for pair in report["retrieval"]["bound"]:
        if report["retrieval"]["bound"][pair]["concept_auc"] is not None:
            assert ("bound - best baseline", pair, "concept_auc") in claims
            assert ("final - bound", pair, "concept_auc") in claims
    for m in MODALITIES:
        assert ("final - bound", m, "accuracy") in claims and ("bound - control", m, "accuracy") in claims
    for d in report["differences"]:
        if d["claim"] == "bound - best baseline":
            baselines = {v: report["retrieval"][v][d["where"]]["concept_auc"] for v in ("random_heads", "chaining",
                                                                                        "control")}
            best = max((v for v in baselines if baselines[v] is not None), key=baselines.get)
            assert d["b"] == best
            assert d["difference"] == pytest.approx(report["retrieval"]["bound"][d["where"]]["concept_auc"] - baselines[best])
        if d["claim"] == "final - bound" and d["section"] == "retrieval":
            # distill.update_heads is off: the image embeddings, hence retrieval, do not change
            assert d["difference"] == pytest.approx(0.0) and d["ci"] == pytest.approx([0.0, 0.0])


def test_report_files_show_the_new_sections(run):
    root, _, _ = run
    md = (root / "run" / "report" / "report.md").read_text(encoding="utf-8")
    for heading in ("## Choices made on validation", "## Differences, with paired bootstrap intervals",
                    "## Student check: a second cohort in unseen wording"):
        assert heading in md
    assert "| xray->ecg | random_heads (chance) |" in md
    saved = json.loads((root / "run" / "report" / "report.json").read_text())
    assert saved["differences"] and saved["student_check"]["cohort"]["report_vocabulary"] == "alternative"


def test_student_check_compares_final_and_teachers_on_the_second_cohort(run):
    root, _, report = run
    check = report["student_check"]
    assert set(check["modalities"]) == set(MODALITIES)
    cohort = json.loads((root / "run" / "student_check" / "cohort" / "cohort.json").read_text())
    assert cohort["seed"] == 1 and cohort["report_vocabulary"] == "alternative"
    for measures in check["modalities"].values():
        assert set(measures) == {"image", "image_alternative", "reports"}
        for result in measures.values():
            d = result["difference"]
            assert d["accuracy"] == pytest.approx(result["final"]["accuracy"] - result["teachers"]["accuracy"])
            assert result["within_bar"] == (d["accuracy"] >= -0.05 and d.get("auc_macro", 0.0) >= -0.05)
    assert check["meets_bar"] == all(r["within_bar"] for m in check["modalities"].values() for r in m.values())


def test_the_control_is_bound_with_lambda_zero_and_reused(run):
    from m3bind.stages.control import control_experiment, control_is_current

    _, exp, _ = run
    control = control_experiment(exp)
    assert control.cfg.bind.lambda_text == 0.0 and control.cfg.bind.steps == exp.cfg.bind.steps
    assert control_is_current(exp)


class _NoTest(Experiment):
    """An experiment that fails loudly when anything reads a test split."""

    def studies(self, modality, split, *, paired=False):
        assert split != "test", f"read the test split of {modality} (paired={paired}) while tuning"
        return super().studies(modality, split, paired=paired)


def _poison_test_files(cohort: Path) -> None:
    """Overwrite every test study file of the cohort (paired ones too) with garbage."""
    for manifest in [*cohort.glob("*/manifest.csv"), *cohort.glob("paired/*.csv")]:
        table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        for path in table[table.split == "test"].path:
            (manifest.parent / path).write_bytes(b"not a study")


def test_tuning_never_reads_the_test_split(run, tmp_path):
    from m3bind.stages.evaluate import load_variants

    root, exp, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    _poison_test_files(tmp_path / "cohort")
    config = _config(tmp_path, "run")
    config["modalities"] = {m: {**spec, "model": {"type": "builtin", "path": str(exp.pretrained_dir(m))}}
                            for m, spec in config["modalities"].items()}
    spy = _NoTest(parse_config(config))
    (tmp_path / "run").mkdir()
    shutil.copytree(root / "run" / "bind", tmp_path / "run" / "bind")
    shutil.copytree(root / "run" / "model", tmp_path / "run" / "model")
    variants = load_variants(spy, list(MODALITIES))
    choice = choose_prototype_rule(spy, variants)
    assert choice["chosen"] in ("mean+name", "mean", "renormalised+name", "renormalised")
    assert choose_chaining_profile(spy, variants["unbound"], retrieval_pairs(spy))["chosen"] in ("standardised", "raw")
    result = modality_zero_shot(spy, "xray", variants["bound"]["xray"])
    assert result["split"] == "val"
    # the stage diagnostics (bind's before/after lines) read validation too
    from m3bind.stages.bind import run_bind

    summary = run_bind(spy, log=lambda _: None)
    assert summary["after"]["zero_shot"]["xray"]["split"] == "val"
    # ... and rank retrieval by plain cosine, which the summary names (the report's choice comes later)
    assert summary["diagnostics_similarity"] == "cosine"
    assert summary["after"]["retrieval"] == protocol.paired_retrieval(spy, load_bound(spy), retrieval_pairs(spy))
    # and the poisoned test files really are unreadable: evaluation proper would fail on them
    from m3bind.errors import DataError

    with pytest.raises(DataError):
        Experiment(parse_config(config)).studies("xray", "test").images[:]


def test_chaining_retrieves_the_same_concept_on_a_constructed_case():
    """Two modalities with unrelated embedding spaces (12 and 20 dimensions), each model's own
    image and text encoders agreeing on three concepts (orthonormal concept directions, a little
    noise on the images): chaining by concept score profiles finds each query's concept, so
    concept AUC is 1 and the nearest gallery study always shows the query's concept."""
    gen = torch.Generator().manual_seed(0)
    concepts = ["a", "b", "c"]
    labels = [i % 3 for i in range(30)]
    text_x = torch.linalg.qr(torch.randn(12, 3, generator=gen))[0].T
    text_y = torch.linalg.qr(torch.randn(20, 3, generator=gen))[0].T
    image_x = torch.nn.functional.normalize(text_x[labels] + 0.05 * torch.randn(30, 12, generator=gen), dim=-1)
    image_y = torch.nn.functional.normalize(text_y[labels] + 0.05 * torch.randn(30, 20, generator=gen), dim=-1)
    ids = [f"p{i}" for i in range(30)]
    sets = [frozenset({concepts[c]}) for c in labels]
    for profile in ("standardised", "raw"):
        q, g = chaining_profiles(image_x, text_x, profile), chaining_profiles(image_y, text_y, profile)
        assert q.shape == (30, 3) and torch.allclose(q.norm(dim=-1), torch.ones(30))
        scores = embedding_query_scores(q, g, ids, ids, sets, sets, ks=(1,)).summary()
        assert scores["concept_auc"] == pytest.approx(1.0)
        assert scores["concept_precision"][1] == 1.0
    with pytest.raises(ValueError, match="profile"):
        chaining_profiles(image_x, text_x, "cubed")


def test_prompt_concept_and_test_only_paired_fallbacks_are_used_and_reported(run, tmp_path):
    """A prompt file without an entry for one class, and an older paired set: test rows only and
    no concepts column. Evaluation runs, the class gets naive prompts, concepts come from shared
    labels, the chaining profile falls back to its default, and the report says all three; the
    stage diagnostics show no retrieval rather than read the test rows."""
    from m3bind.stages import run_eval

    root, exp, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    for m in MODALITIES:
        path = tmp_path / "cohort" / "paired" / f"{m}.csv"
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table[table.split == "test"].drop(columns=["concepts"]).to_csv(path, index=False)
    prompts = tmp_path / "xray_prompts.yaml"
    prompts.write_text('template: "Impression: {}."\nclasses:\n  normal: [the lungs are clear]\n'
                       '  cardiomegaly: [the heart is enlarged]\n')
    config = _config(tmp_path, "run", lambda0_control=False, student_check={"enabled": False})
    config["modalities"] = {m: {**spec, "model": {"type": "builtin", "path": str(exp.pretrained_dir(m))}}
                            for m, spec in config["modalities"].items()}
    config["modalities"]["xray"]["prompts"] = str(prompts)
    fallback = Experiment(parse_config(config))
    (tmp_path / "run").mkdir()
    shutil.copytree(root / "run" / "bind", tmp_path / "run" / "bind")
    assert protocol.paired_retrieval(fallback, load_bound(fallback), retrieval_pairs(fallback)) == {}
    report = run_eval(fallback, command="test", log=lambda _: None, few_shot=False)
    notes = " ".join(report["notes"])
    assert "no 'val' rows" in notes and report["protocol"]["chaining"]["validated"] is False
    assert "no prompt-file entry for consolidation, lung nodule, pleural effusion, pneumothorax" in notes
    assert "no 'concepts' column" in notes
    # X-ray and CT share cardiomegaly, pleural effusion and lung nodule by name; ECG shares none
    assert report["retrieval"]["bound"]["xray->ct"]["concept_auc"] is not None
    assert report["retrieval"]["bound"]["xray->ecg"]["concept_auc"] is None
    # ...so there every study is "normal" and would match every other: precision is undefined, not 1.0.
    assert report["retrieval"]["bound"]["xray->ecg"]["concept_precision"] == {"1": None, "5": None, "10": None}
    assert report["retrieval"]["bound"]["xray->ecg"]["concept_chance"] is None
    assert report["retrieval"]["bound"]["xray->ct"]["concept_precision"]["1"] is not None
    assert "ct->ecg, ecg->ct, ecg->xray, xray->ecg: no paired test study shows a concept" in notes
    assert report["protocol"]["chaining"]["concepts"] == ["cardiomegaly", "lung nodule", "pleural effusion"]


def test_a_custom_modality_with_coded_labels_runs_end_to_end(run, tmp_path):
    """A user's own data in another shape: the X-ray modality is called 'cxr' (a name m3bind does
    not know, handled `like: xray`), its labels are codes ("LUNG_NODULE") with normal studies
    written "No Finding", its manifest is JSONL in another folder. Every stage runs; the
    preprocessing and built-in model are X-ray's; "No Finding" is the normal class, not a class of
    its own; coded labels get the shipped X-ray descriptions when the config gives the prompt file."""
    from importlib import resources

    from m3bind.errors import ConfigError
    from m3bind.stages import run_bind, run_distill, run_eval, run_pretrain

    root, _, _ = run
    coded = lambda cell: "|".join(label.upper().replace(" ", "_") for label in cell.split("|") if label) or "No Finding"
    for source, target in ((root / "cohort" / "xray" / "manifest.csv", tmp_path / "tables" / "cxr.jsonl"),
                           (root / "cohort" / "paired" / "xray.csv", tmp_path / "tables" / "cxr_paired.jsonl")):
        table = pd.read_csv(source, dtype=str, keep_default_na=False).drop(columns=["modality", "concepts"])
        table["path"] = [str(source.parent / p) for p in table["path"]]
        table["labels"] = table["labels"].map(coded)
        target.parent.mkdir(exist_ok=True)
        table.to_json(target, orient="records", lines=True)
    config = _config(root, "unused", lambda0_control=False, student_check={"enabled": False})
    config["output_dir"] = str(tmp_path / "run")
    config["modalities"] = {"cxr": {**config["modalities"]["xray"], "manifest": str(tmp_path / "tables" / "cxr.jsonl")},
                            "ecg": config["modalities"]["ecg"]}
    config["paired_manifests"] = {"cxr": str(tmp_path / "tables" / "cxr_paired.jsonl"),
                                  "ecg": config["paired_manifests"]["ecg"]}
    with pytest.raises(ConfigError, match="'cxr' is not a built-in modality .* add `like: xray`"):
        parse_config(config)
    config["modalities"]["cxr"]["like"] = "xray"
    config["modalities"]["cxr"]["prompts"] = str(resources.files("m3bind.eval") / "prompt_sets" / "xray.yaml")
    exp = Experiment(parse_config(config))
    assert exp.preprocess("cxr") == Experiment(parse_config(_config(root, "unused"))).preprocess("xray")
    assert "No Finding" not in exp.manifest("cxr").label_names()
    run_pretrain(exp, log=lambda _: None)
    run_bind(exp, log=lambda _: None)
    run_distill(exp, log=lambda _: None)
    report = run_eval(exp, command="test", log=lambda _: None, few_shot=False)
    assert report["modalities"] == ["cxr", "ecg"]
    classes = report["zero_shot"]["cxr"]["bound"]["expert"]["classes"]
    assert set(classes) == {"normal", "CARDIOMEGALY", "CONSOLIDATION", "LUNG_NODULE", "PLEURAL_EFFUSION", "PNEUMOTHORAX"}
    assert not [n for n in report["notes"] if n.startswith("cxr: no prompt-file entry")]
    assert report["retrieval"]["bound"]["cxr->ecg"]["recall"]["1"] is not None
    # X-ray and ECG labels share no concept: concept numbers are undefined and chaining cannot run.
    assert report["retrieval"]["bound"]["cxr->ecg"]["concept_precision"]["1"] is None
    assert report["retrieval"].get("chaining", {}) == {}
    assert any(n.startswith("The chaining baseline did not run") for n in report["notes"])
    markdown = (tmp_path / "run" / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Cross-modal retrieval (Table 3 style)" in markdown
    assert "Chaining baseline: not run; no concept is shared by two paired modalities" in markdown


def test_a_modality_with_training_rows_only_is_left_out_of_evaluation_and_named(run, tmp_path):
    """A manifest without a split column is all 'train' (bound, evaluated elsewhere): evaluation
    reports the other modalities and says which one it left out, instead of failing on its empty
    test split; asking that modality's test studies directly names the file and the row counts.
    (X-ray also loses its val rows here, which the report must name.)"""
    from m3bind.errors import DataError
    from m3bind.stages import run_eval

    root, exp, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "ct" / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table.drop(columns=["split"]).to_csv(manifest, index=False)
    xray = tmp_path / "cohort" / "xray" / "manifest.csv"
    xray_table = pd.read_csv(xray, dtype=str, keep_default_na=False)
    xray_table[xray_table.split != "val"].to_csv(xray, index=False)
    config = _config(tmp_path, "run", lambda0_control=False, student_check={"enabled": False})
    config["modalities"] = {m: {**spec, "model": {"type": "builtin", "path": str(exp.pretrained_dir(m))}}
                            for m, spec in config["modalities"].items()}
    partial = Experiment(parse_config(config))
    shutil.copytree(root / "run" / "bind", tmp_path / "run" / "bind")
    with pytest.raises(DataError, match=rf"ct{os.sep}manifest.csv: has no 'test' rows \(rows per split: train {len(table)}, "
                                        r"val 0, test 0; a manifest without a 'split' column is all 'train'\)"):
        partial.studies("ct", "test")
    report = run_eval(partial, command="test", log=lambda _: None, few_shot=False)
    assert report["modalities"] == ["xray", "ct", "ecg"] and set(report["zero_shot"]) == {"xray", "ecg"}
    assert any(n.startswith("ct: no 'test' rows in the manifest") for n in report["notes"])
    assert "xray->ct" in report["retrieval"]["bound"]  # its paired studies still take part
    # ... in the baselines too: each covers every pair the bound model is scored on
    for baseline in ("random_heads", "chaining"):
        assert set(report["retrieval"][baseline]) == set(report["retrieval"]["bound"]), baseline
    assert not any(n.startswith("The chaining baseline did not run") for n in report["notes"])
    # xray has no val rows: the report says its prototype rule came from the other modalities
    assert any(n.startswith("xray: no 'val' rows, so the prototype rule") for n in report["notes"])


def test_a_dataset_without_validation_rows_gets_no_stage_zero_shot_line(run, tmp_path):
    """Stage diagnostics read validation; a manifest without val rows gives an empty result
    (n 0) instead of failing the stage or falling back to test."""
    root, exp, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "xray" / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table[table.split != "val"].to_csv(manifest, index=False)
    config = _config(tmp_path, "run")
    config["modalities"] = {m: {**spec, "model": {"type": "builtin", "path": str(exp.pretrained_dir(m))}}
                            for m, spec in config["modalities"].items()}
    spy = _NoTest(parse_config(config))
    from m3bind.models.binding import BoundModality

    view = BoundModality(spy.load_unbound("xray"), spy.cfg.shared_dim)
    result = modality_zero_shot(spy, "xray", view)
    assert result["n"] == 0 and result["split"] == "val"


def test_a_modality_whose_studies_all_have_several_findings_says_why_it_has_no_zero_shot_accuracy(run, tmp_path):
    """Zero-shot classification scores single-finding studies; a split where every study has
    several findings has none to score, and the stage line and the report say that, not 'no
    val studies' or a table of dashes without a word."""
    from m3bind.stages import run_eval

    root, exp, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "xray" / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table.loc[table.split != "train", "labels"] = "cardiomegaly|pleural effusion"
    table.to_csv(manifest, index=False)
    config = _config(tmp_path, "run", lambda0_control=False, student_check={"enabled": False})
    config["modalities"] = {m: {**spec, "model": {"type": "builtin", "path": str(exp.pretrained_dir(m))}}
                            for m, spec in config["modalities"].items()}
    several = Experiment(parse_config(config))
    from m3bind.models.binding import BoundModality

    result = modality_zero_shot(several, "xray", BoundModality(several.load_unbound("xray"), several.cfg.shared_dim))
    assert result["n"] == 0
    assert protocol.describe_zero_shot(result) == ("not measured: every val study has several findings (zero-shot "
                                                   "classification scores single-finding studies)")
    shutil.copytree(root / "run" / "bind", tmp_path / "run" / "bind")
    report = run_eval(several, command="test", log=lambda _: None, few_shot=False)
    assert all(entry["expert"] is None for entry in report["zero_shot"]["xray"].values())
    assert all(entry["presence"]["n"] == int((table.split == "test").sum())
               for entry in report["zero_shot"]["xray"].values())
    assert any(n.startswith("xray: zero-shot classification not measured: every test study has several findings")
               for n in report["notes"])
    assert not any(n.startswith("ct: zero-shot classification not measured") for n in report["notes"])


def test_embed_texts_encodes_each_distinct_text_once_shortest_first_and_keeps_order():
    """One row per input text, in the input's order, although duplicates are encoded once and
    batches go shortest first (the real reports repeat a third of their texts)."""
    batches = []

    def encode(texts):
        batches.append(list(texts))
        return torch.tensor([[float(len(t)), float(sum(map(ord, t)))] for t in texts])

    texts = ["a much longer report text", "short", "mid length", "short", "a much longer report text", "x"]
    out = protocol.embed_texts(encode, texts)
    assert out.tolist() == [[float(len(t)), float(sum(map(ord, t)))] for t in texts]
    encoded = [t for batch in batches for t in batch]
    assert sorted(encoded) == sorted(set(texts))
    assert [len(t) for t in encoded] == sorted(len(t) for t in encoded)


def test_shared_image_embeddings_equal_per_view_embeddings_and_encode_each_image_side_once():
    """While an experiment shares image embeddings, views with the same image-side weights (here:
    two copies of one model, one with LoRA on its text tower and another head, as unbound and
    bound are) run the image model once per study set, and every view gets exactly the
    embeddings it gets alone; a changed image weight, or image LoRA, is never shared."""
    import copy

    from m3bind.models.binding import BoundModality
    from m3bind.models.builtin import build_builtin_model
    from m3bind.models.view import SharedSpaceView

    texts = ["Sinus rhythm.", "Atrial fibrillation.", "Left bundle branch block."]
    base = build_builtin_model("ecg", texts, seed=0).eval()
    unbound = BoundModality(copy.deepcopy(base), 16, seed=0).eval()
    bound = BoundModality(copy.deepcopy(base), 16, seed=1)
    bound.prepare_for_binding(4, 4.0, 0.0, text=True, image=False)
    bound.eval()
    final = SharedSpaceView(bound.model, bound.head, bound).eval()
    changed = copy.deepcopy(base).eval()
    with torch.no_grad():
        next(changed.image_tower.parameters()).view(-1)[0] += 1.0
    changed_view = BoundModality(changed, 16, seed=0).eval()
    image_lora = BoundModality(copy.deepcopy(base), 16, seed=0)
    image_lora.prepare_for_binding(4, 4.0, 0.0, text=False, image=True)
    image_lora.eval()
    views = {"unbound": unbound, "bound": bound, "final": final, "changed": changed_view, "image_lora": image_lora}
    images = torch.randn(300, 12, 1000, generator=torch.Generator().manual_seed(0))  # 3 batches of EVAL_BATCH

    exp = Experiment(parse_config({"modalities": {}, "output_dir": "unused"}), None)
    alone = {name: protocol.embed_images(view.encode_image, images) for name, view in views.items()}
    calls = []
    for model in {id(v.model if hasattr(v, "model") else v.image_model): v for v in views.values()}.values():
        inner = model.model if hasattr(model, "model") else model.image_model
        original = inner.encode_image
        inner.encode_image = lambda batch, original=original: calls.append(len(batch)) or original(batch)
    with exp.sharing_image_embeddings():
        shared = {name: protocol.embed_view_images(exp, view, images) for name, view in views.items()}
    for name in views:
        assert torch.equal(shared[name], alone[name]), name
    # unbound, bound and final share one pass; the changed model and the image-LoRA model get their own.
    assert calls == [128, 128, 44] * 3
    assert exp.image_memo is None  # only while sharing
    assert not torch.equal(shared["unbound"], shared["bound"])  # different heads still apply


def test_builtin_model_takes_its_input_channels_from_the_preprocessing(run, tmp_path):
    """The published X-ray preprocessing repeats grayscale into 3 channels (demo sizes keep 1): a
    built-in model pretrains on whichever the config's preprocessing gives, and options asking
    for other channels are a named config error, not a shape error mid-training."""
    from m3bind.errors import ConfigError
    from m3bind.stages import run_pretrain

    root, _, _ = run
    cfg = _config(root, "three-channels")
    cfg["modalities"]["xray"]["preprocess"] = {"channels": 3}
    exp = Experiment(parse_config(cfg))
    run_pretrain(exp, ["xray"], log=lambda _: None)
    model = exp.load_unbound("xray")
    assert model.config.in_channels == 3 and exp.preprocess("xray").output_shape()[0] == 3
    assert model.encode_image(exp.studies("xray", "val").images[:2]).shape == (2, 8)

    cfg["modalities"]["xray"]["model"]["options"]["in_channels"] = 1
    with pytest.raises(ConfigError, match=r"modalities\.xray\.model\.options\.in_channels is 1, but the "
                                          r"preprocessing gives 3"):
        run_pretrain(Experiment(parse_config(cfg)), ["xray"], log=lambda _: None)


def test_a_manifest_without_labels_trains_with_plain_clip_and_is_evaluated_by_retrieval_only(run, tmp_path):
    """A user's image-report pairs with no labels column: every study reads as normal. Label-aware
    targets would then match every pair and leave nothing to contrast, so pretraining and binding
    use plain CLIP for that modality (the same steps as with label_aware off); evaluation does not
    'classify' one class (accuracy 1.0 would mean nothing): it skips zero-shot and few-shot for it
    with a note, and measures retrieval."""
    from m3bind.stages import run_bind, run_eval, run_pretrain

    root, _, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "ecg" / "manifest.csv"
    pd.read_csv(manifest, dtype=str, keep_default_na=False).drop(columns=["labels"]).to_csv(manifest, index=False)
    histories = {}
    for label_aware in (True, False):
        config = _config(tmp_path, f"run-{label_aware}", lambda0_control=False, student_check={"enabled": False})
        config["pretrain"]["label_aware"] = label_aware
        config["bind"]["label_aware"] = label_aware
        exp = Experiment(parse_config(config))
        lines: list[str] = []
        run_pretrain(exp, log=lines.append)
        run_bind(exp, log=lines.append)
        histories[label_aware] = (pd.read_csv(exp.out_dir / "pretrain" / "ecg" / "metrics.csv")["loss"].tolist()
                                  # binding's later steps also see the other modalities (through the alignment
                                  # term), whose targets do differ between the two runs; its first step does not
                                  + pd.read_csv(exp.out_dir / "bind" / "metrics.csv")["clip/ecg"].tolist()[:1])
        assert sum(line.startswith("ecg: every training study has the same findings") for line in lines) == 2 * label_aware
        assert any("ecg: zero-shot accuracy not measured: its manifest names no findings" in line for line in lines)
    assert len(histories[True]) == 2 + 1 and histories[True] == histories[False]

    report = run_eval(exp, command="test", log=lambda _: None)
    assert report["zero_shot"]["ecg"] == {} and "ecg" not in report["few_shot"]
    assert set(report["zero_shot"]["xray"]) >= {"unbound", "bound"} and "xray" in report["few_shot"]
    assert any(n.startswith("ecg: zero-shot and few-shot classification not measured") for n in report["notes"])
    assert not any(n.startswith("ecg: no prompt-file entry") for n in report["notes"])
    assert report["retrieval"]["bound"]["xray->ecg"]["recall"]["1"] is not None
    assert report["text_to_image"]["bound"]["ecg"]["recall"]["1"] is not None
    assert "### ecg\n\n_Not measured (see the notes)._" in (exp.out_dir / "report" / "report.md").read_text()


def test_one_modality_without_validation_rows_runs_to_a_report_with_the_defaults_named(run, tmp_path):
    """The smallest user setup: one modality, train and test rows only. Nothing can be chosen on
    validation and there is no second text encoder to agree with: the run still completes (it used
    to fail at evaluation, after all its training), text agreement is not measured rather than a
    perfect 1.0, and the report says the prototype rule is the default, not a validated choice."""
    from m3bind.stages import run_bind, run_distill, run_eval, run_pretrain

    root, _, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    manifest = tmp_path / "cohort" / "ecg" / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["split"] = table["split"].replace({"val": "train"})
    table.to_csv(manifest, index=False)
    config = _config(tmp_path, "run", lambda0_control=False, student_check={"enabled": False})
    config["modalities"] = {"ecg": config["modalities"]["ecg"]}
    del config["paired_manifests"]
    exp = Experiment(parse_config(config))
    lines: list[str] = []
    run_pretrain(exp, log=lines.append)
    summary = run_bind(exp, log=lines.append)
    run_distill(exp, log=lines.append)
    report = run_eval(exp, command="test", log=lines.append)
    assert summary["before"]["text_agreement"] is None and summary["after"]["text_agreement"] is None
    assert "after binding: text agreement not measured (needs two modalities and validation reports)" in lines
    assert report["text_space"]["bound"] == {"agreement": None, "text_recall": None}
    assert report["protocol"]["prototype_choice"]["default"] is True
    assert report["protocol"]["prototype_rule"] == protocol.STAGE_PROTOTYPE_RULE
    assert any(n.startswith("No modality has single-label validation studies") for n in report["notes"])
    assert set(report["zero_shot"]["ecg"]) == {"unbound", "bound", "m3bind"}
    md = (exp.out_dir / "report" / "report.md").read_text()
    assert f"Prototype rule: {protocol.STAGE_PROTOTYPE_RULE}, the default (no modality has single-label" in md


def test_a_paired_set_that_pairs_nothing_is_refused_before_training(run, tmp_path):
    """Paired manifests whose patient ids never meet would report Recall@K 0 for every query, a
    number that looks like a result; `check_paired_set` (run by `m3bind run` before pretraining,
    and by bind and eval) names the files instead. A patient missing in one modality is counted."""
    from m3bind.errors import DataError

    root, _, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    paired = tmp_path / "cohort" / "paired" / "ecg.csv"
    table = pd.read_csv(paired, dtype=str, keep_default_na=False)
    renamed = table.assign(patient_id="other-" + table["patient_id"])
    renamed.to_csv(paired, index=False)
    config = _config(tmp_path, "run")
    with pytest.raises(DataError, match=r"paired.xray\.csv: no patient_id of its 'val' rows is in the ecg paired "
                                        r"manifest's 'val' rows \(.*ecg\.csv\)"):
        protocol.check_paired_set(Experiment(parse_config(config)))
    # One export wrote the ids as numbers (zeros lost) or in other case: the error says so.
    table.assign(patient_id=table["patient_id"].str.lower()).to_csv(paired, index=False)
    with pytest.raises(DataError, match=r"they differ only in spelling, e.g. 'P(\d+)' here and 'p\1' there "
                                        r"\(leading zeros, case or spaces\): write the ids one way in both"):
        protocol.check_paired_set(Experiment(parse_config(config)))
    table.loc[0, "patient_id"] = ""
    table.to_csv(paired, index=False)
    with pytest.raises(DataError, match=r"ecg\.csv, row 1, column 'patient_id': no patient_id"):
        protocol.check_paired_set(Experiment(parse_config(config)))
    table.loc[0, "patient_id"] = "someone-else"
    table.to_csv(paired, index=False)
    protocol.check_paired_set(Experiment(parse_config(config)))  # one unmatched patient: allowed, and counted
    # ... and when the unmatched one is there under another spelling, the report's note says so.
    from m3bind.stages.evaluate import _unpaired_spelling

    test_row = int((table["split"] == "test").to_numpy().nonzero()[0][-1])
    original = table.loc[test_row, "patient_id"]
    table.loc[test_row, "patient_id"] = original.lower()
    table.to_csv(paired, index=False)
    exp = Experiment(parse_config(config))
    assert _unpaired_spelling(exp, "ecg->xray") == (f" Some may be there under another spelling of their id: "
                                                    f"'{original.lower()}' in ecg is '{original}' in xray.")
    assert _unpaired_spelling(exp, "xray->ct") == ""


def test_a_patient_on_both_paired_val_and_test_is_refused_and_train_test_overlap_is_noted(run, tmp_path):
    """Choices are made on the paired val patients: one of them also on test would let those
    choices see test. Patients on a manifest's train and test splits are reported in the notes."""
    from m3bind.errors import DataError
    from m3bind.stages.evaluate import _patient_overlap_notes

    root, _, _ = run
    shutil.copytree(root / "cohort", tmp_path / "cohort")
    paired = tmp_path / "cohort" / "paired" / "ecg.csv"
    table = pd.read_csv(paired, dtype=str, keep_default_na=False)
    test_patient = table.loc[table.split == "test", "patient_id"].iloc[0]
    table.loc[table.index[table.split == "val"][0], "patient_id"] = test_patient
    table.to_csv(paired, index=False)
    config = _config(tmp_path, "run")
    with pytest.raises(DataError, match=rf"1 patient\(s\) of the paired set are on both the 'val' and the 'test' "
                                        rf"split \(e\.g\. '{test_patient}', 'val' in .*ecg\.csv\)"):
        protocol.check_paired_set(Experiment(parse_config(config)))

    exp = Experiment(parse_config(_config(root, "unused")))
    assert _patient_overlap_notes(exp, ["xray", "ecg"]) == []          # the cohort keeps patients apart
    manifest = tmp_path / "cohort" / "xray" / "manifest.csv"
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    test_ids = rows.loc[rows.split == "test", "patient_id"].iloc[:2].tolist()
    train_index = rows.index[rows.split == "train"][:2]
    rows.loc[train_index, "patient_id"] = test_ids
    rows.loc[rows.index[rows.split == "train"][2], "patient_id"] = test_patient   # a paired test patient
    rows.to_csv(manifest, index=False)
    table.loc[table.index[table.split == "val"][0], "patient_id"] = "val-only"
    table.to_csv(paired, index=False)
    notes = _patient_overlap_notes(Experiment(parse_config(config)), ["xray", "ecg"])
    assert len(notes) == 2, notes
    assert notes[0].startswith("xray: 2 patient(s) have studies on both the 'train' and the 'test' split")
    # the patient ids are shared across the cohort's modalities, so that paired test patient is an
    # X-ray paired test patient whose X-ray model trained on one of their studies
    assert re.match(r"xray: 1 of the \d+ paired test patients also have training studies", notes[1]), notes[1]


def test_distill_diagnostics_say_they_rank_by_cosine_beside_the_saved_models_choice(run):
    _, exp, report = run
    summary = json.loads((exp.out_dir / "distill" / "summary.json").read_text())
    assert summary["diagnostics_similarity"] == "cosine"
    cosine = protocol.paired_retrieval(exp, load_bound(exp), retrieval_pairs(exp))
    assert summary["retrieval_after"] == json.loads(json.dumps(cosine))   # as summary.json stores it
    assert summary["retrieval_similarity"]["chosen"] == report["protocol"]["retrieval_similarity"]["m3bind"]["chosen"]


def test_the_amb_and_seskd_ablation_rows_and_the_main_runs_ranking(run):
    """Paper Table 5's study: four settings, every pair and modality measured on the test split,
    and the AMB-on row without SESKD is the main run's bound model ranked by cosine."""
    from m3bind.stages.ablate import ablation_path, run_ablation

    _, exp, _ = run
    rows = run_ablation(exp, "amb_seskd", log=lambda _: None)
    assert [row["setting"] for row in rows] == [{"AMB": amb, "SESKD": seskd} for amb in (False, True)
                                                for seskd in (False, True)]
    pairs = {f"{q}->{g}" for q, g in retrieval_pairs(exp)}
    for row in rows:
        assert set(row["retrieval"]) == pairs and row["split"] == "test" and row["retrieval_similarity"] == "cosine"
        assert set(row["zero_shot"]) == set(MODALITIES)
        assert all(0.0 <= accuracy <= 1.0 for accuracy in row["zero_shot"].values())
    main = protocol.paired_query_scores(exp, load_bound(exp), retrieval_pairs(exp), "test")
    amb_on = rows[2]["retrieval"]
    for pair, scores in main.items():
        expected = scores.summary()
        assert amb_on[pair]["recall"] == {str(k): v for k, v in expected["recall"].items()}
        assert amb_on[pair]["concept_auc"] == (None if expected["concept_auc"] is None
                                               else pytest.approx(expected["concept_auc"], abs=1e-12))
    assert rows[0]["retrieval"] != rows[2]["retrieval"]   # switching AMB off changes the binding
    assert json.loads(ablation_path(exp, "amb_seskd").read_text()) == json.loads(json.dumps(rows))
