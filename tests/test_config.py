import pytest
import yaml

from m3bind.config import ExperimentConfig, config_reference, load_config, parse_config
from m3bind.errors import ConfigError


def test_defaults_match_the_paper():
    cfg = parse_config({"recipe": "paper"})
    assert cfg.shared_dim == 512
    assert cfg.bind.lambda_text == 10.0
    assert cfg.bind.lr == 2e-5
    assert cfg.bind.balance.beta == 0.5
    assert (cfg.bind.lora.r, cfg.bind.lora.alpha, cfg.bind.lora.dropout) == (8, 8.0, 0.1)


def test_the_recipe_fills_what_a_file_leaves_out_by_the_kind_of_models_and_never_what_it_sets():
    from m3bind.config import BUILTIN_RECIPE

    builtin = parse_config({"modalities": {"xray": {}, "heart": {"like": "ecg"}}})
    assert builtin.resolved_recipe == "builtin"
    for path, values in BUILTIN_RECIPE.items():
        section = builtin
        for part in filter(None, path.split(".")):
            section = getattr(section, part)
        assert {key: getattr(section, key) for key in values} == values, path
    assert builtin.distill.kd_weight == builtin.shared_dim == 256
    assert builtin.modalities["heart"].preprocess == {"normalize": "none"} and builtin.modalities["xray"].preprocess == {}
    # One published model (or a pretrained student) makes it the paper's.
    published = parse_config({"modalities": {"xray": {"model": {"type": "mgca", "path": "m.ckpt"}}, "ecg": {}}})
    assert published.resolved_recipe == "paper"
    assert (published.shared_dim, published.bind.lr, published.bind.label_aware, published.distill.student.pooling,
            published.distill.kd_weight, published.modalities["ecg"].preprocess, published.demo_sizes) == (
        512, 2e-5, False, "cls", 1.0, {}, False)
    assert parse_config({"modalities": {"xray": {}}, "distill": {"student": {"type": "minilm"}}}).resolved_recipe == "paper"
    # Keys the file sets win, and kd_weight follows the shared_dim it sets.
    mine = parse_config({"modalities": {"ecg": {"preprocess": {"normalize": "per_lead_zscore"}}}, "shared_dim": 64,
                         "bind": {"lr": 1e-4, "label_aware": False}, "distill": {"student": {"pooling": "cls"}}})
    assert (mine.shared_dim, mine.bind.lr, mine.bind.label_aware, mine.bind.lambda_text, mine.distill.kd_weight,
            mine.distill.student.pooling, mine.modalities["ecg"].preprocess) == (64, 1e-4, False, 30.0, 64.0, "cls",
                                                                                 {"normalize": "per_lead_zscore"})
    assert parse_config({"recipe": "paper", "modalities": {"xray": {}}}).bind.lr == 2e-5
    # A resolved config written out and read again is the same config.
    assert parse_config(builtin.model_dump(mode="json")) == builtin


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


def test_the_readmes_own_data_example_is_a_valid_config_with_the_builtin_recipe():
    """The README's 'Your own data' block is what a new user copies first; it must stay valid."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```yaml\n# mine.yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(yaml.safe_load(block), "README.md: mine.yaml")
    assert list(cfg.modalities) == ["cxr", "fundus", "ecg"]
    assert cfg.modalities["cxr"].like == "xray" and cfg.modalities["fundus"].like == "retina"
    assert set(cfg.paired_manifests) == {"cxr", "ecg"}
    assert cfg.resolved_recipe == "builtin" and cfg.demo_sizes   # every model built-in: the validated recipe
