"""Adapter registry, safe checkpoint reading, strict key checks, option paths, binding, configs/paper.yaml."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from m3bind.config import load_config
from m3bind.errors import CheckpointError, ConfigError
from m3bind.experiment import Experiment
from m3bind.models.adapters import adapter_class, adapter_names, load_adapter, load_saved_adapter
from m3bind.models.adapters.checkpoint_io import extract_state_dict, read_checkpoint
from m3bind.models.adapters.flair import FLAIROptions
from m3bind.models.binding import BoundModality, merge_lora
from m3bind.models.builtin import BuiltinCLIP
from m3bind.models.weights import load_state_strict
from test_adapters_fixtures import VOCAB, close, write_bert_folder

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = ["open_clip", "hf_clip", "mgca", "flair", "ct_clip", "ecg_clip"]


class _Marker:
    """Pickles as a call that creates a file: proof of whether unpickling ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_registry_names_and_unknown_type():
    assert adapter_names() == [*ADAPTERS, "builtin"]
    assert {adapter_class(name).model_type for name in adapter_names()} == set(adapter_names())
    assert adapter_class("builtin") is BuiltinCLIP
    with pytest.raises(ConfigError) as error:
        load_adapter("medclip", "/nowhere", {})
    assert all(name in str(error.value) for name in adapter_names())
    with pytest.raises(ConfigError, match="model type 'builtin' has no original checkpoint format"):
        load_adapter("builtin", "/nowhere", {})


def test_missing_path_and_bad_options_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="needs model.path"):
        load_adapter("flair", None, {})
    with pytest.raises(CheckpointError, match=r"absent\.pth: checkpoint for model type 'flair' not found"):
        load_adapter("flair", tmp_path / "absent.pth", {})
    (tmp_path / "flair.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="tokeniser"):
        load_adapter("flair", tmp_path / "flair.pth", {"tokeniser": "x"})


def test_read_checkpoint_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": _Marker(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="broken.safetensors: cannot read"):
        read_checkpoint(tmp_path / "broken.safetensors")


def test_extract_state_dict_layouts():
    weights = {"a.weight": torch.ones(1)}
    assert extract_state_dict(weights, "f") == weights
    assert extract_state_dict({"state_dict": weights, "epoch": 3}, "f") == weights  # Lightning
    assert extract_state_dict({"model": weights, "optim": {}}, "f") == weights  # CT-CLIP trainer
    assert extract_state_dict({"module.a.weight": torch.ones(1)}, "f") == weights  # nn.DataParallel
    with pytest.raises(CheckpointError, match="not tensors: step"):
        extract_state_dict({"state_dict": {"a.weight": torch.ones(1), "step": 3}}, "f")
    with pytest.raises(CheckpointError, match="top-level keys are epoch"):
        extract_state_dict({"epoch": 3}, "f")


def test_ignore_patterns_never_hide_a_missing_weight():
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    state = {k: v for k, v in module.state_dict().items() if k != "1.bias"}
    state["local_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 missing keys: 1\.bias") as error:
        load_state_strict(module, state, "file.pt", ignore=("1.*", "local_head.*"))
    assert "local_head" not in str(error.value)
    state["1.bias"] = torch.full((2,), 7.0)
    assert load_state_strict(module, state, "file.pt", ignore=("local_head.*",)) == ["local_head.weight"]
    assert torch.equal(module[1].bias, torch.full((2,), 7.0))
    with pytest.raises(CheckpointError, match="no key matches; the file's keys start with other."):
        load_state_strict(module, {"other.w": torch.zeros(1)}, "file.pt")


def test_option_paths_resolve_against_the_checkpoint_folder(tmp_path):
    relative = FLAIROptions(text_model="Bio_ClinicalBERT").with_resolved_paths(tmp_path)
    assert relative.text_model == str(tmp_path / "Bio_ClinicalBERT")
    absolute = FLAIROptions(text_model="/models/bert").with_resolved_paths(tmp_path)
    assert absolute.text_model == "/models/bert"
    # base_dir overrides the default (the folder that contains model.path).
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "flair.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(tmp_path / "elsewhere" / "Bio_ClinicalBERT")):
        load_adapter("flair", tmp_path / "ckpt" / "flair.pth", {"text_model": "Bio_ClinicalBERT"},
                     base_dir=tmp_path / "elsewhere")


# --------------------------------------------------------------------------- binding integration

def tiny_adapter(name: str, tmp_path: Path):
    """A tiny instance of each adapter's architecture (random weights), built from options alone."""
    import test_adapters_clip as clip
    import test_adapters_ct_clip as ct
    import test_adapters_flair_ecg as flair_ecg
    import test_adapters_mgca as mgca

    write_bert_folder(tmp_path / "bio_clinicalbert")
    write_bert_folder(tmp_path / "cxr_bert")
    options = {
        "mgca": mgca.OPTIONS,
        "flair": {"text_model": "bio_clinicalbert", "proj_dim": 8},
        "ct_clip": ct.OPTIONS,
        "ecg_clip": flair_ecg.ECG_OPTIONS,
        "open_clip": {"config": clip.QUILT_LIKE},
    }
    if name == "hf_clip":
        folder = clip.write_hf_clip_folder(tmp_path / "plip")
        return load_adapter("hf_clip", folder, {})
    cls = adapter_class(name)
    return cls.build(cls.parse_options(options[name], tmp_path)).eval()


INPUTS = {"mgca": (3, 32, 32), "flair": (3, 32, 32), "ct_clip": (1, 6, 8, 8), "ecg_clip": (12, 50),
          "open_clip": (3, 32, 32), "hf_clip": (3, 32, 32)}


@pytest.mark.parametrize("name", ["mgca", "flair", "ct_clip", "ecg_clip", "open_clip", "hf_clip"])
def test_lora_targets_bind_merge_save_and_rebuild(name, tmp_path):
    model = tiny_adapter(name, tmp_path)
    images = torch.randn(1, *INPUTS[name])
    texts = ["Small left pleural effusion.", "Sinus rhythm."]
    bound = BoundModality(model, shared_dim=24)
    counts = bound.prepare_for_binding(r=2, alpha=2, dropout=0.0, text=True, image=True)
    assert counts["text"] > 0 and counts["image"] > 0  # the target names exist in both towers
    for module in model.modules():  # make the LoRA updates non-zero, as after training
        if hasattr(module, "lora_B"):
            for weight in module.lora_B.values():
                nn.init.normal_(weight.weight, std=0.1)
    bound.eval()
    with torch.no_grad():
        image_emb, text_emb = bound.encode_image(images), bound.encode_texts(texts)
    assert image_emb.shape == (1, 24) and text_emb.shape == (2, 24)
    merge_lora(model.text_tower)
    merge_lora(model.image_tower)
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter(name, tmp_path / "saved")
    assert type(rebuilt) is type(model) and rebuilt.native_dim == model.native_dim
    with torch.no_grad():
        assert close(bound.head(rebuilt.encode_image(images)), image_emb, atol=1e-4)
        assert close(bound.head(rebuilt.encode_texts(texts)), text_emb, atol=1e-4)


def test_bound_model_with_adapters_saves_and_loads(tmp_path):
    """M3Bind.save_pretrained / from_pretrained rebuild adapter models through load_saved_adapter."""
    from m3bind.config import StudentConfig
    from m3bind.models.bound import M3Bind
    from m3bind.models.heads import BindingHead
    from m3bind.models.student import build_student

    models = {"ecg": tiny_adapter("ecg_clip", tmp_path), "ct": tiny_adapter("ct_clip", tmp_path)}
    heads = {m: BindingHead(model.native_dim, 24, torch.Generator().manual_seed(1)) for m, model in models.items()}
    student = build_student(StudentConfig(type="builtin"), ["sinus rhythm", "emphysema is present"], shared_dim=24)
    bound = M3Bind(models, heads, student)
    bound.save_pretrained(tmp_path / "bound")
    loaded = M3Bind.from_pretrained(tmp_path / "bound")
    assert {m: type(model) for m, model in loaded.models.items()} == {m: type(model) for m, model in models.items()}
    for modality, shape in (("ecg", (2, 12, 50)), ("ct", (2, 1, 6, 8, 8))):
        studies = torch.randn(*shape)
        assert close(loaded.encode_images(modality, studies), bound.encode_images(modality, studies))


def test_saved_folder_of_another_type_or_incomplete_is_refused(tmp_path):
    model = tiny_adapter("ecg_clip", tmp_path)
    model.save_pretrained(tmp_path / "saved")
    with pytest.raises(CheckpointError, match="saved model type is 'ecg_clip', not 'flair'"):
        load_saved_adapter("flair", tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights file not found"):
        load_saved_adapter("ecg_clip", tmp_path / "saved")
    description = json.loads((tmp_path / "saved" / "adapter.json").read_text())
    assert description["options"]["text_model"] == "text_model"  # points into the saved folder
    assert len(VOCAB) == json.loads((tmp_path / "saved" / "text_model" / "config.json").read_text())["vocab_size"]


# --------------------------------------------------------------------------- student text model

@pytest.mark.parametrize("cased", [False, True])
def test_student_from_a_bert_folder_keeps_its_lower_casing(cased, tmp_path):
    """Bio_ClinicalBERT's repo has no tokenizer_config.json, so it lower-cases; a cased config stays cased."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from m3bind.config import StudentConfig
    from m3bind.models.student import StudentTextEncoder, build_student

    folder = write_bert_folder(tmp_path / "bert")
    BertModel(BertConfig.from_pretrained(str(folder))).save_pretrained(str(folder))
    if cased:
        BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False).save_pretrained(str(folder))
    student = build_student(StudentConfig(type="hf", path=str(folder)), [], shared_dim=8)
    expected = VOCAB.index("HEART") if cased else VOCAB.index("heart")
    assert student.tokenize(["HEART"])["input_ids"].tolist() == [[2, expected, 3]]
    student.save_pretrained(tmp_path / "saved")
    reloaded = StudentTextEncoder.from_pretrained(tmp_path / "saved")
    assert reloaded.tokenize(["HEART"])["input_ids"].tolist() == [[2, expected, 3]]


# --------------------------------------------------------------------------- configs/paper.yaml

def test_paper_config_validates_and_fails_clearly_without_checkpoints(tmp_path):
    # A copy in an empty tree, so the test holds on a machine where checkpoints/ has been filled.
    path = tmp_path / "configs" / "paper.yaml"
    path.parent.mkdir()
    path.write_text((REPO / "configs" / "paper.yaml").read_text())
    config = load_config(path)
    assert config.shared_dim == 512
    assert {m: spec.model.type for m, spec in config.modalities.items()} == {
        "xray": "mgca", "ct": "ct_clip", "retina": "flair", "ecg": "ecg_clip", "pathology": "open_clip"}
    assert (config.bind.steps, config.bind.lambda_text, config.bind.lr) == (15000, 10.0, 2e-5)
    assert (config.distill.kd_steps, config.distill.contrastive_steps) == (1200, 1200)
    assert config.distill.student.type == "hf"
    experiment = Experiment.from_file(path)
    for modality, spec in config.modalities.items():
        checkpoint = (path.parent / spec.model.path).resolve()
        assert not checkpoint.exists()  # nothing is shipped
        with pytest.raises(CheckpointError) as error:
            experiment.load_unbound(modality)
        assert Path(spec.model.path).name in str(error.value) and "not found" in str(error.value)
