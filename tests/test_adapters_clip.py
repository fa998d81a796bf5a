"""open_clip and Hugging Face CLIP adapters, compared with the libraries' own models on the same weights."""
from __future__ import annotations

import json
import math

import open_clip
import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.adapters import load_adapter, load_saved_adapter
from m3bind.models.adapters.checkpoint_writers import TRAINED_LOG_LOGIT_SCALE, write_open_clip_folder
from m3bind.models.binding import merge_lora
from test_adapters_fixtures import close, write_bert_folder

TEXTS = ["a histopathology photo of tumor tissue", "benign lymph node"]
QUILT_LIKE = {  # QuiltNet-B-32's layout (open_clip CLIP, ViT + causal text transformer), tiny sizes
    "model_cfg": {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def biomedclip_like(text_model: str) -> dict:
    """BiomedCLIP's layout: timm ViT trunk + Hugging Face BERT text tower (tiny timm 'test_vit')."""
    return {"model_cfg": {"embed_dim": 16,
                          "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False,
                                         "timm_pool": "", "timm_proj": "linear", "image_size": 160},
                          "text_cfg": {"hf_model_name": text_model, "hf_tokenizer_name": text_model,
                                       "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                       "context_length": 16}},
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


def test_open_clip_quilt_layout_matches_open_clip(tmp_path):
    folder = write_open_clip_folder(tmp_path / "QuiltNet-B-32", QUILT_LIKE)
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model = load_adapter("open_clip", folder, {})
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(model.encode_image(images), reference.encode_image(images, normalize=True))
        assert close(model.encode_texts(TEXTS), reference.encode_text(tokenizer(TEXTS), normalize=True))
    assert model.native_dim == 16 and model.modality == "pathology"
    assert model.logit_scale().item() == pytest.approx(math.exp(TRAINED_LOG_LOGIT_SCALE))
    assert model.preprocess.size == 32 and model.preprocess.mean == tuple(QUILT_LIKE["preprocess_cfg"]["mean"])
    tokens = model.tokenize(TEXTS)
    assert tokens["input_ids"].shape == (2, 77) and tokens["attention_mask"][1].sum() < 77
    # Both towers use nn.MultiheadAttention, which peft wraps as a whole.
    assert model.text_lora_targets == ("attn",) and model.image_lora_targets == ("attn",)


def test_open_clip_lora_merge_and_saved_folder(tmp_path):
    folder = write_open_clip_folder(tmp_path / "quilt", QUILT_LIKE)
    model = load_adapter("open_clip", folder, {"modality": "histology"})
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.text_lora_targets), init_lora_weights=False)
    peft.inject_adapter_in_model(config, model.text_tower)
    model.eval()
    with torch.no_grad():
        before_merge = model.encode_texts(TEXTS)
    merge_lora(model.text_tower)
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("open_clip", tmp_path / "saved")
    with torch.no_grad():
        assert close(rebuilt.encode_texts(TEXTS), before_merge)
    assert rebuilt.modality == "histology"


def test_open_clip_biomedclip_layout_with_local_text_model(tmp_path):
    text_model = write_bert_folder(tmp_path / "BiomedBERT")
    folder = tmp_path / "BiomedCLIP"
    write_open_clip_folder(folder, biomedclip_like(str(text_model)), pretrained_text=False)
    AutoTokenizer.from_pretrained(str(text_model)).save_pretrained(str(folder))  # the hub repo ships them
    reference = open_clip.create_model(f"local-dir:{folder}").eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    # As downloaded, the config names the text model by its hub id; options.text_model points at a local copy.
    (folder / "open_clip_config.json").write_text(
        json.dumps(biomedclip_like("microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract")))
    with pytest.raises(ConfigError, match="options.text_model"):
        load_adapter("open_clip", folder, {})
    model = load_adapter("open_clip", folder, {"text_model": "BiomedBERT"})
    images = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert close(model.encode_image(images), reference.encode_image(images, normalize=True))
        assert close(model.encode_texts(TEXTS), reference.encode_text(tokenizer(TEXTS), normalize=True))
    assert model.text_lora_targets == ("query", "value") and model.image_lora_targets == ("qkv",)
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("open_clip", tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_texts(TEXTS), model.encode_texts(TEXTS))


def test_open_clip_missing_and_misshaped_weights_are_named(tmp_path):
    folder = write_open_clip_folder(tmp_path / "quilt", QUILT_LIKE)
    state = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
    del state["ln_final.weight"]
    state["text_projection"] = torch.zeros(32, 8)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        load_adapter("open_clip", folder, {})
    assert "missing keys: ln_final.weight" in str(error.value)
    assert "text_projection (file (32, 8), model (32, 16))" in str(error.value)
    assert "open_clip_pytorch_model.bin" in str(error.value)
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(CheckpointError, match="open_clip_config.json"):
        load_adapter("open_clip", folder, {})


# --------------------------------------------------------------------------- Hugging Face CLIPModel

def clip_tokenizer(folder):
    """OpenAI CLIP's real BPE tokenizer in Hugging Face format, built from open_clip's bundled vocabulary."""
    simple = open_clip.tokenizer.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(token, token): index for token, index in simple.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder))


def write_hf_clip_folder(folder):
    """A PLIP-like CLIPModel folder: config, model.safetensors, tokenizer, preprocessor_config.json."""
    folder.mkdir(parents=True)
    tokenizer = clip_tokenizer(folder)
    config = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=77),
                        vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2),
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 32},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.3, 0.3, 0.3]}))
    return folder


def test_hf_clip_matches_transformers(tmp_path):
    folder = write_hf_clip_folder(tmp_path / "plip")
    model = load_adapter("hf_clip", folder, {})
    reference = CLIPModel.from_pretrained(str(folder)).eval()
    images = torch.randn(2, 3, 32, 32)
    tokens = model.tokenize(TEXTS)
    assert tokens["input_ids"][0, 0] == 49406 and 49407 in tokens["input_ids"][0]  # start / end of text
    with torch.no_grad():
        output = reference(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=images)
        assert close(model.encode_image(images), output.image_embeds)
        assert close(model.encode_text(tokens), output.text_embeds)
    assert model.native_dim == 16
    assert model.preprocess.size == 32 and model.preprocess.std == (0.3, 0.3, 0.3)
    assert model.logit_scale().item() == pytest.approx(reference.logit_scale.exp().item())
    for tower, targets in ((model.text_tower, model.text_lora_targets), (model.image_tower, model.image_lora_targets)):
        peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(targets)), tower)
    assert sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules()) == 2 * 2 + 2 * 2

    model.save_pretrained(tmp_path / "saved")  # unmerged LoRA layers are rejected when rebuilding
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_saved_adapter("hf_clip", tmp_path / "saved")


def test_hf_clip_save_round_trip(tmp_path):
    folder = write_hf_clip_folder(tmp_path / "plip")
    model = load_adapter("hf_clip", folder, {})
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("hf_clip", tmp_path / "saved")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # equal up to the last bit (kernels may differ with memory layout)
        assert close(rebuilt.encode_image(images), model.encode_image(images), atol=1e-6)
        assert close(rebuilt.encode_texts(TEXTS), model.encode_texts(TEXTS), atol=1e-6)
    assert rebuilt.preprocess == model.preprocess


def test_hf_clip_broken_weights_are_named(tmp_path):
    folder = write_hf_clip_folder(tmp_path / "plip")
    state = load_file(str(folder / "model.safetensors"))
    del state["text_projection.weight"]
    state["visual_projection.weight"] = torch.zeros(8, 32)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as error:
        load_adapter("hf_clip", folder, {})
    assert "text_projection.weight" in str(error.value) and "visual_projection.weight" in str(error.value)
    assert str(folder) in str(error.value)


def test_experiment_preprocesses_with_the_published_models_own_settings(tmp_path):
    """A published model used for a modality (here a PLIP-like CLIP folder as the X-ray model)
    gets its own preprocessing (RGB, its size and mean/std), not the modality's defaults; the
    config's overrides still apply on top; built-in models keep the modality defaults."""
    from m3bind.config import parse_config
    from m3bind.data.preprocess_specs import PathologyPreprocess, XrayPreprocess
    from m3bind.experiment import Experiment

    folder = write_hf_clip_folder(tmp_path / "plip")
    config = {"output_dir": str(tmp_path / "out"),
              "modalities": {"xray": {"model": {"type": "hf_clip", "path": str(folder)}},
                             "ecg": {}}}
    exp = Experiment(parse_config(config, "<test>"))
    spec = exp.preprocess("xray")
    assert isinstance(spec, PathologyPreprocess)
    assert spec.size == 32 and spec.std == (0.3, 0.3, 0.3) and spec.mean == (0.5, 0.5, 0.5)
    config["modalities"]["xray"]["preprocess"] = {"size": 48}
    assert Experiment(parse_config(config, "<test>")).preprocess("xray").size == 48
    assert not isinstance(exp.preprocess("ecg"), XrayPreprocess)
    from m3bind.data.transforms import default_preprocess
    assert exp.preprocess("ecg") == default_preprocess("ecg", demo=exp.cfg.demo_sizes)
