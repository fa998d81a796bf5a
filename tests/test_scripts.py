"""scripts/: the helpers whose output goes into the README and docs/findings.md."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_report(folder: Path, pair_differences: dict, zero_shot_differences: dict) -> Path:
    """The report.json fields seed_sweep reads: retrieval, differences, text_space, zero_shot."""
    differences = [{"claim": "bound - best baseline", "where": pair, "difference": diff, "ci": [low, high],
                    "excludes_zero": low > 0 or high < 0, "b": "chaining", "section": "retrieval"}
                   for pair, (diff, low, high) in pair_differences.items()]
    differences += [{"claim": "final - bound", "where": m, "difference": diff, "ci": [low, high],
                     "excludes_zero": low > 0 or high < 0, "section": "zero_shot.expert", "metric": "accuracy"}
                    for m, (diff, low, high) in zero_shot_differences.items()]
    report = {"retrieval": {"bound": {p: {"concept_auc": 0.7} for p in pair_differences},
                            "control": {p: {"concept_auc": 0.6} for p in pair_differences}},
              "differences": differences,
              "text_space": {"bound": {"agreement": 0.88}, "control": {"agreement": 0.0}},
              "zero_shot": {m: {} for m in zero_shot_differences}}
    (folder / "report").mkdir(parents=True)
    (folder / "report" / "report.json").write_text(json.dumps(report))
    return folder


def test_seed_sweep_counts_runs_above_and_below_zero(tmp_path, capsys):
    a = fake_report(tmp_path / "seed0", {"xray->ct": (0.05, 0.01, 0.09), "ct->xray": (-0.02, -0.05, 0.01)},
                    {"xray": (-0.3, -0.4, -0.2)})
    b = fake_report(tmp_path / "seed1", {"xray->ct": (0.04, 0.02, 0.06), "ct->xray": (-0.03, -0.04, -0.02)},
                    {"xray": (0.1, -0.1, 0.3)})
    load_script("seed_sweep").main([a, b])
    lines = capsys.readouterr().out.splitlines()
    row = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in lines if line.startswith("| ")}
    assert row["xray->ct"] == "2 / 0"      # both intervals above zero
    assert row["ct->xray"] == "0 / 1"      # one below, one across zero
    assert row["xray"] == "0 / 1"
    assert "seed0: beats best baseline on 1 of 2, above control on 2" in "\n".join(lines)


def test_tune_binding_reads_nested_and_boolean_bind_keys():
    from m3bind.config import BindConfig

    tune = load_script("tune_binding")
    cfg = BindConfig()
    assert tune.bind_updates(cfg, "lambda_text", "30") == {"lambda_text": 30.0}
    assert tune.bind_updates(cfg, "steps", "150") == {"steps": 150}
    nested = tune.bind_updates(cfg, "balance.lr_scaling", "false")["balance"]
    assert nested.lr_scaling is False
    # the other balance settings are the config's, not reset to defaults
    assert (nested.sampling, nested.loss_weights, nested.beta) == (cfg.balance.sampling, cfg.balance.loss_weights,
                                                                   cfg.balance.beta)
    assert tune.bind_updates(cfg, "balance.beta", "0.25")["balance"].beta == 0.25
