"""The command line: clean one-line errors, and the commands on a tiny cohort."""
import yaml
from typer.testing import CliRunner

from m3bind.cli import app

runner = CliRunner()


def test_bad_config_is_one_clear_line_and_exit_code_2(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"bind": {"lamda_text": 1}}))
    result = runner.invoke(app, ["config", str(config)])
    assert result.exit_code == 2
    assert "bind.lamda_text: unknown key (did you mean 'lambda_text'?)" in result.output
    assert "Traceback" not in result.output


def test_missing_manifest_and_missing_phase_one_are_clean_errors(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"modalities": {"xray": {"manifest": "nowhere.csv"}}}))
    result = runner.invoke(app, ["pretrain", str(config)])
    assert result.exit_code == 2 and "nowhere.csv: manifest file does not exist" in result.output


def test_cohort_command_writes_manifests_and_preview(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["cohort", "--out", str(out), "--patients", "30", "--preview", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for modality in ("xray", "ct", "retina", "ecg", "pathology"):
        assert (out / modality / "manifest.csv").exists()
    assert (out / "preview.png").stat().st_size > 10_000
    assert "xray" in result.output and "train" in result.output
