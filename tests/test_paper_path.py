"""The paper's path end to end: configs/paper-tiny.yaml on randomly initialised checkpoints in each
published model's original on-disk format, ``m3bind run`` then ``m3bind eval`` on a synthetic cohort.

Also the loading problems that path exposed: CXR-BERT's custom-code folder layout, and
writers that must never replace a user's real checkpoints.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import BertTokenizer
from typer.testing import CliRunner

from m3bind.config import load_config
from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.adapters import checkpoint_writers, hf_text
from m3bind.models.adapters.random_checkpoints import TINY, wordpiece_vocabulary, write_random_checkpoints

REPO = Path(__file__).resolve().parents[1]
PAPER_TYPES = {"xray": "mgca", "ct": "ct_clip", "retina": "flair", "ecg": "ecg_clip", "pathology": "open_clip"}
VARIANTS = {"unbound", "bound", "m3bind"}
RETRIEVAL_BASELINES = {"random_heads", "chaining"}  # the unbound models in retrieval: chance and chaining


def copy_config(root: Path, name: str) -> Path:
    """``configs/<name>`` copied into a fresh tree, so its ``../runs`` and ``../checkpoints`` land in ``root``."""
    path = root / "configs" / name
    path.parent.mkdir(parents=True)
    path.write_text((REPO / "configs" / name).read_text())
    return path


# --------------------------------------------------------------------------- CXR-BERT's folder

def test_cxr_bert_folder_loads_as_bert_without_running_its_code(tmp_path):
    folder = checkpoint_writers.write_cxr_bert_folder(tmp_path / "cxr", wordpiece_vocabulary(400),
                                                      dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=32))
    # The hub copy ships the code its auto_map names; running it would create the marker.
    marker = tmp_path / "code_ran"
    code = f"open({str(marker)!r}, 'w').close()\n"
    for name in ("configuration_cxrbert.py", "modeling_cxrbert.py", "tokenization_cxrbert.py"):
        (folder / name).write_text(code)
    config = hf_text.load_bert_config(folder)
    assert (config.model_type, config.hidden_size, config.vocab_size) == ("bert", 16, 400)
    tokenizer = hf_text.load_tokenizer(folder)
    assert isinstance(tokenizer, BertTokenizer)
    assert tokenizer(["Pleural EFFUSION"])["input_ids"] == tokenizer(["pleural effusion"])["input_ids"]
    assert not marker.exists()


def test_other_custom_code_and_architectures_are_refused(tmp_path):
    folder = checkpoint_writers.write_cxr_bert_folder(tmp_path / "custom", wordpiece_vocabulary(400),
                                                      dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "my-bert"}))
    with pytest.raises(CheckpointError, match=r"config.json: describes a 'my-bert' model"):
        hf_text.load_bert_config(folder)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "MyTokenizer",
                                                              "auto_map": {"AutoTokenizer": ["my.MyTokenizer", None]}}))
    with pytest.raises(CheckpointError, match="cannot load a tokenizer"):
        hf_text.load_tokenizer(folder)


def test_mgca_tokenizer_larger_than_its_embedding_table_is_named(tmp_path):
    from m3bind.models.adapters.mgca import MGCAAdapter

    checkpoint_writers.write_bert_folder(tmp_path / "Bio_ClinicalBERT", wordpiece_vocabulary(500),
                                         dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2))
    options = MGCAAdapter.parse_options({"tokenizer": "Bio_ClinicalBERT", "text": {"vocab_size": 400}}, tmp_path)
    with pytest.raises(ConfigError, match="the tokenizer has 500 tokens but options.text.vocab_size is 400"):
        MGCAAdapter.build(options)


# --------------------------------------------------------------------------- random checkpoints

def test_random_checkpoints_never_replace_existing_files(tmp_path):
    config = copy_config(tmp_path, "paper.yaml")
    real = tmp_path / "checkpoints" / "CT-CLIP_v2.pt"
    real.parent.mkdir()
    real.write_bytes(b"the user's download")
    with pytest.raises(ConfigError, match=r"refusing to write random weights over existing files: .*CT-CLIP_v2.pt"):
        write_random_checkpoints(load_config(config), config, TINY)
    assert real.read_bytes() == b"the user's download"
    assert sorted(p.name for p in real.parent.iterdir()) == ["CT-CLIP_v2.pt"]  # nothing else was written


def test_tiny_config_keeps_the_paper_setup():
    paper, tiny = (yaml.safe_load((REPO / "configs" / name).read_text()) for name in ("paper.yaml", "paper-tiny.yaml"))
    assert {m: spec["model"]["type"] for m, spec in tiny["modalities"].items()} == PAPER_TYPES
    for modality, spec in paper["modalities"].items():
        assert Path(tiny["modalities"][modality]["model"]["path"]).name == Path(spec["model"]["path"]).name
    assert tiny["shared_dim"] == paper["shared_dim"] == 512
    assert tiny["distill"]["student"]["type"] == paper["distill"]["student"]["type"] == "hf"
    for key in ("lora", "balance", "lambda_text", "lr"):
        assert tiny["bind"][key] == paper["bind"][key], key
    assert set(tiny["paired_manifests"]) == set(paper["paired_manifests"])


def test_checkpoint_preprocess_matches_the_loaded_model_without_reading_weights(tmp_path):
    """Every paper adapter states its checkpoint's preprocessing from options and config files:
    the same spec the loaded model carries, still readable once the weight files are garbage."""
    from m3bind.config import resolve_path
    from m3bind.models.adapters import checkpoint_preprocess, load_adapter

    config = copy_config(tmp_path, "paper-tiny.yaml")
    cfg = load_config(config)
    write_random_checkpoints(cfg, config, TINY)
    for modality, spec in cfg.modalities.items():
        path = resolve_path(config, spec.model.path)
        expected = load_adapter(spec.model.type, path, spec.model.options).preprocess
        assert checkpoint_preprocess(spec.model.type, path, spec.model.options) == expected, modality
        weights = [f for f in ([path] if path.is_file() else path.iterdir())
                   if f.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors")]
        assert weights, modality
        for file in weights:
            file.write_bytes(b"not a checkpoint")
        assert checkpoint_preprocess(spec.model.type, path, spec.model.options) == expected, modality
        with pytest.raises(CheckpointError):
            load_adapter(spec.model.type, path, spec.model.options)


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_paper_path_runs_and_evaluates_through_every_adapter(tmp_path):
    from m3bind.api import M3Bind
    from m3bind.cli import app
    from m3bind.cohort import generate_cohort
    from m3bind.data.readers import read_study
    from m3bind.data.transforms import build_transform
    from m3bind.experiment import Experiment

    config = copy_config(tmp_path, "paper-tiny.yaml")
    write_random_checkpoints(load_config(config), config, TINY)
    generate_cohort(tmp_path / "runs" / "paper-tiny" / "cohort", n_patients=120, seed=0, workers=2)
    runner = CliRunner()
    for command in ("run", "eval"):
        result = runner.invoke(app, [command, str(config)])
        assert result.exit_code == 0, result.output

    exp = Experiment.from_file(config)
    out = exp.out_dir
    # The frozen published towers streamed their studies, as at real scale: no preprocessed copy;
    # only their embedding tables, one per modality, shared by binding and SESKD.
    assert not any(exp.caches_studies(m) for m in PAPER_TYPES)
    assert [p.name for p in exp.cache_dir.iterdir()] == ["image-embeddings"]
    # One table per image tower, read by binding and SESKD alike (QuiltNet's had two while peft's
    # attention LoRA, which rewrites the text tower's base weights at each forward, counted as image side).
    assert sorted(p.name.split("-")[0] for p in exp.image_tables_dir.iterdir()) == sorted(PAPER_TYPES)
    bind = json.loads((out / "bind" / "summary.json").read_text())
    assert bind["steps"] == 4 and set(bind["modalities"]) == set(PAPER_TYPES)
    # LoRA went into every adapter's text tower: trainable = LoRA + a 512-wide head.
    for modality, count in bind["parameters"].items():
        native = 128 if modality == "xray" else 512
        assert count["trainable"] > native * 512, modality
    assert json.loads((out / "distill" / "summary.json").read_text())["steps"] == 4

    report = json.loads((out / "report" / "report.json").read_text())
    assert report["command"] == f"m3bind eval {config}"
    assert set(report["modalities"]) == set(PAPER_TYPES) and set(report["variants"]) == VARIANTS | RETRIEVAL_BASELINES
    for modality in PAPER_TYPES:
        for table in ("zero_shot", "few_shot"):
            assert set(report[table][modality]) == VARIANTS, (table, modality)
        for variant in VARIANTS:
            accuracy = report["zero_shot"][modality][variant]["expert"]["accuracy"]
            assert 0.0 <= accuracy <= 1.0, (modality, variant)
    for variant in VARIANTS:
        assert set(report["text_to_image"][variant]) == set(PAPER_TYPES), variant
    for variant in (VARIANTS - {"unbound"}) | RETRIEVAL_BASELINES:
        assert {"xray->ecg", "ecg->xray"} <= set(report["retrieval"][variant])

    model = M3Bind.from_pretrained(out / "model")
    assert {m: model.models[m].model_type for m in model.modalities} == PAPER_TYPES
    # The student started from the BERT folder's weights: after 4 steps at lr 2e-5 they moved by
    # far less than a fresh initialisation would differ (std 0.02).
    folder_weights = torch.load(tmp_path / "runs" / "paper-tiny" / "checkpoints" / "Bio_ClinicalBERT" /
                                "pytorch_model.bin", weights_only=True)["bert.embeddings.word_embeddings.weight"]
    student_weights = model.student.backbone.embeddings.word_embeddings.weight.detach()
    assert (student_weights - folder_weights).abs().max() < 2e-3
    assert (student_weights - folder_weights).abs().max() > 0  # and distillation trained it

    # Every modality embeds a raw study file, preprocessed by the saved model exactly as the
    # experiment preprocessed its training and test studies.
    for modality in PAPER_TYPES:
        manifest = exp.manifest(modality).split("test")
        path = manifest.absolute_path(0)
        from_file = model.encode_images(modality, path)
        as_trained = build_transform(modality, exp.preprocess(modality))(read_study(path))
        assert from_file.shape == (1, 512) and torch.isfinite(from_file).all()
        assert torch.allclose(from_file.norm(dim=-1), torch.ones(1), atol=1e-5)
        assert torch.allclose(from_file, model.encode_images(modality, as_trained[None]), atol=1e-6), modality
    text = model.encode_texts(["Small left pleural effusion."])
    assert text.shape == (1, 512) and torch.isfinite(text).all()
    assert load_file(out / "model" / "heads.safetensors").keys() == {f"{m}.weight" for m in PAPER_TYPES}

    # Distillation is reproducible whatever ran before it in the process: the folder student's
    # dropout masks come from the config's seed.
    from m3bind.stages import run_distill

    first = json.loads((out / "distill" / "summary.json").read_text())["final_losses"]
    torch.rand(1000)
    run_distill(Experiment.from_file(config), log=lambda *_: None)
    assert json.loads((out / "distill" / "summary.json").read_text())["final_losses"] == first
