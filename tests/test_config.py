import pytest
import yaml

from m3bind.config import ExperimentConfig, config_reference, load_config, parse_config
from m3bind.errors import ConfigError


def test_defaults_match_the_paper():
    cfg = parse_config({})
    assert cfg.shared_dim == 512
    assert cfg.bind.lambda_text == 10.0
    assert cfg.bind.lr == 2e-5
    assert cfg.bind.balance.beta == 0.5
    assert (cfg.bind.lora.r, cfg.bind.lora.alpha, cfg.bind.lora.dropout) == (8, 8.0, 0.1)


def test_unknown_nested_key_names_path_allowed_keys_and_suggestion():
    with pytest.raises(ConfigError) as info:
        parse_config({"bind": {"lora": {"rank": 4}}})
    message = str(info.value)
    assert "bind.lora.rank: unknown key" in message
    assert "allowed keys here: alpha, dropout, image, r, text" in message


def test_misspelled_key_gets_a_suggestion():
    with pytest.raises(ConfigError) as info:
        parse_config({"bind": {"lamda_text": 3}})
    assert "did you mean 'lambda_text'" in str(info.value)


def test_unknown_key_inside_a_modality_mapping():
    with pytest.raises(ConfigError) as info:
        parse_config({"modalities": {"xray": {"manfest": "a.csv"}}})
    assert "modalities.xray.manfest" in str(info.value)
    assert "did you mean 'manifest'" in str(info.value)


def test_wrong_type_and_range_are_reported_with_their_key():
    with pytest.raises(ConfigError) as info:
        parse_config({"bind": {"steps": "many"}, "pretrain": {"batch_size": 1}})
    message = str(info.value)
    assert "bind.steps" in message and "pretrain.batch_size" in message


def test_load_config_from_yaml_file_and_errors_name_the_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"shared_dim": 64, "modalities": {"ecg": {"manifest": "ecg.csv"}}}))
    cfg = load_config(good)
    assert cfg.shared_dim == 64 and cfg.modalities["ecg"].manifest == "ecg.csv"
    bad = tmp_path / "bad.yaml"
    bad.write_text("shared_dim: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_every_field_is_documented_in_the_reference():
    rows = config_reference(ExperimentConfig)
    keys = [key for key, _, _ in rows]
    assert "bind.balance.loss_weights" in keys and "distill.update_heads" in keys
    assert all(description for _, _, description in rows), [k for k, _, d in rows if not d]


def test_docs_config_reference_is_up_to_date():
    from pathlib import Path

    from m3bind.config import config_reference_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert doc.read_text() == config_reference_markdown(), "regenerate docs/config-reference.md"
