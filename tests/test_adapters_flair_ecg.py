"""FLAIR and ECG-CLIP adapters: original key layouts, documented forward passes, LoRA, save/rebuild."""
from __future__ import annotations

import json

import peft
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet50
from transformers import BertConfig, BertModel

from m3bind.errors import CheckpointError
from m3bind.models.adapters import load_adapter, load_saved_adapter
from m3bind.models.adapters.checkpoint_writers import write_state_dict
from m3bind.models.adapters.ecg_clip import ECGCLIPAdapter
from m3bind.models.adapters.flair import FLAIRAdapter
from m3bind.models.binding import merge_lora
from test_adapters_fixtures import TINY_BERT, VOCAB, close, perturbed_state, write_bert_folder

TEXTS = ["A fundus photograph of mild diabetic retinopathy.", "Normal fundus."]


def reference_bert(state, prefix):
    """A Hugging Face BertModel (with pooler) holding the checkpoint's text weights."""
    config = BertConfig(vocab_size=len(VOCAB), **TINY_BERT)
    bert = BertModel(config, add_pooling_layer=True)
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "position_ids" not in k}
    bert.load_state_dict(weights, strict=True)
    return bert.eval()


# --------------------------------------------------------------------------- FLAIR

FLAIR_OPTIONS = {"text_model": "bio_clinicalbert", "proj_dim": 8}


@pytest.fixture(scope="module")
def flair_files(tmp_path_factory):
    """A tiny FLAIR checkpoint (ResNet-50 is full size) written once: (folder, .pth path, state)."""
    tmp_path = tmp_path_factory.mktemp("flair")
    write_bert_folder(tmp_path / "bio_clinicalbert")
    torch.manual_seed(0)
    options = FLAIRAdapter.parse_options(FLAIR_OPTIONS, tmp_path)
    state = perturbed_state(FLAIRAdapter.build(options).network, seed=2)
    state["logit_scale"] = torch.tensor(5.0)  # above FLAIR's clamp
    # transformers < 4.31 saved this buffer; FLAIR's flair_resnet.pth has it.
    legacy = {**state, "text_model.model.embeddings.position_ids": torch.arange(64)[None]}
    return tmp_path, write_state_dict(tmp_path / "flair_resnet.pth", legacy), state


def flair_reference(state, images, tokens):
    resnet = resnet50(weights=None)
    resnet.fc = nn.Identity()
    resnet.load_state_dict({k[len("vision_model.model."):]: v for k, v in state.items()
                            if k.startswith("vision_model.model.")})
    features = resnet.eval()(images)
    vision_projection = state["vision_model.projection_head_vision.projection.weight"]
    image = F.normalize(F.normalize(features, dim=-1) @ vision_projection.T, dim=-1)
    hidden = reference_bert(state, "text_model.model.")(
        input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], output_hidden_states=True).hidden_states
    # Mean over every token position (padding too) of layers 1, 2 and the last, then over the 3 layers.
    pooled = (hidden[1].mean(dim=1) + hidden[2].mean(dim=1) + hidden[-1].mean(dim=1)) / 3
    text = F.normalize(F.normalize(pooled, dim=-1) @ state["text_model.projection_head_text.projection.weight"].T,
                       dim=-1)
    return image, text


@pytest.fixture(scope="module")
def flair_model(flair_files):
    return load_adapter("flair", flair_files[1], FLAIR_OPTIONS)


def test_flair_pth_matches_reference_forward(flair_files, flair_model):
    _, _, state = flair_files
    model = flair_model
    images = torch.rand(2, 3, 64, 64)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        expected_image, expected_text = flair_reference(state, images, tokens)
        assert close(model.encode_image(images), expected_image, atol=1e-4)
        assert close(model.encode_text(tokens), expected_text)
    assert model.native_dim == 8 and model.modality == "retina"
    assert model.preprocess.size == 512 and model.image_lora_targets == ("conv2",)
    # FLAIR clamps log(logit scale) at 4.6052 before exp; the file holds 5.0.
    assert model.logit_scale().item() == pytest.approx(100.0, rel=1e-4)


def test_flair_text_embedding_depends_on_batch_padding_like_the_original(flair_model):
    with torch.no_grad():
        alone = flair_model.encode_texts(["Normal fundus."])
        padded = flair_model.encode_texts(["Normal fundus.", TEXTS[0]])[:1]
    assert not close(alone, padded)  # padding positions enter FLAIR's mean


def test_flair_hugging_face_folder_loads_the_same_model(flair_files, flair_model):
    tmp_path, _, state = flair_files
    folder = tmp_path / "jusiro2_FLAIR"  # what FLAIRModel.from_pretrained("jusiro2/FLAIR") downloads
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"vision_type": "resnet_v1", "proj_dim": 8}))
    # Relative option paths resolve against the folder that contains model.path.
    from_folder = load_adapter("flair", folder, FLAIR_OPTIONS)
    tokens = flair_model.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(from_folder.encode_text(tokens), flair_model.encode_text(tokens))
    with pytest.raises(CheckpointError, match="no FLAIR weights file"):
        load_adapter("flair", tmp_path / "bio_clinicalbert", FLAIR_OPTIONS)


def test_flair_wrong_projection_width_is_named(flair_files):
    _, path, _ = flair_files
    with pytest.raises(CheckpointError, match=r"projection_head_text.projection.weight \(file \(8, 32\), "
                                              r"model \(512, 32\)\)"):
        load_adapter("flair", path, {"text_model": "bio_clinicalbert"})


# --------------------------------------------------------------------------- ECG-CLIP

ECG_OPTIONS = dict(text_model="bio_clinicalbert", d_model=16, nhead=2, num_layers=2, dim_feedforward=32,
                   max_seq_len=50, proj_dim=8, fs=5.0)


def write_ecg(tmp_path, **options):
    write_bert_folder(tmp_path / "bio_clinicalbert")
    torch.manual_seed(0)
    parsed = ECGCLIPAdapter.parse_options({**ECG_OPTIONS, **options}, tmp_path)
    state = perturbed_state(ECGCLIPAdapter.build(parsed).network, seed=3, scale=0.2)
    return write_state_dict(tmp_path / "ecg_clip.pt", state), state


def ecg_reference(state, signals):
    """The authors' ECGEncoder intent, run through torch's own nn.TransformerEncoder."""
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation="relu", batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    encoder.load_state_dict({k[len("ecg_encoder.transformer_encoder."):]: v for k, v in state.items()
                             if k.startswith("ecg_encoder.transformer_encoder.")})
    steps = signals.transpose(1, 2)
    tokens = F.linear(steps, state["ecg_encoder.value_embedding.weight"], state["ecg_encoder.value_embedding.bias"])
    tokens = tokens + state["ecg_encoder.position_embedding"][:, :steps.shape[1]]
    tokens = torch.cat([state["ecg_encoder.cls_token"].expand(len(signals), -1, -1), tokens], dim=1)
    cls = encoder.eval()(tokens)[:, 0]
    return F.normalize(F.linear(cls, state["ecg_proj.weight"], state["ecg_proj.bias"]), dim=-1)


def test_ecg_clip_matches_torch_transformer_and_bert(tmp_path):
    path, state = write_ecg(tmp_path)
    model = load_adapter("ecg_clip", path, ECG_OPTIONS)
    signals = torch.randn(2, 12, 50)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        assert close(model.encode_image(signals), ecg_reference(state, signals))
        cls = reference_bert(state, "text_encoder.")(**tokens).last_hidden_state[:, 0]
        expected_text = F.normalize(F.linear(cls, state["text_proj.weight"], state["text_proj.bias"]), dim=-1)
        assert close(model.encode_text(tokens), expected_text)
        shorter = model.encode_image(signals[:, :, :30])  # fewer samples use the first position rows
        assert close(shorter, ecg_reference(state, signals[:, :, :30]))
    assert state["ecg_encoder.value_embedding.weight"].shape == (16, 12)  # 'channels': all 12 leads per step
    assert model.preprocess.output_shape() == (12, 50)
    with pytest.raises(ValueError, match="position table holds 50"):
        model.encode_image(torch.randn(1, 12, 51))


def test_ecg_single_lead_mode_reads_only_that_lead(tmp_path):
    path, _ = write_ecg(tmp_path, lead_mode="single", lead_index=1)
    model = load_adapter("ecg_clip", path, {**ECG_OPTIONS, "lead_mode": "single", "lead_index": 1})
    signals = torch.randn(1, 12, 40)
    other_leads_changed, lead_ii_changed = signals.clone(), signals.clone()
    other_leads_changed[:, [0, 2, 7]] += 1.0
    lead_ii_changed[:, 1] += 1.0
    with torch.no_grad():
        base = model.encode_image(signals)
        assert torch.equal(model.encode_image(other_leads_changed), base)
        assert not close(model.encode_image(lead_ii_changed), base)
    # A checkpoint with one input value per step does not load as 'channels'.
    with pytest.raises(CheckpointError, match=r"value_embedding.weight \(file \(16, 1\), model \(16, 12\)\)"):
        load_adapter("ecg_clip", path, ECG_OPTIONS)


def test_ecg_lora_trains_through_attention_then_merges_and_saves(tmp_path):
    path, _ = write_ecg(tmp_path)
    model = load_adapter("ecg_clip", path, ECG_OPTIONS)
    signals = torch.randn(2, 12, 50)
    with torch.no_grad():
        before = model.encode_image(signals)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.image_lora_targets),
                             init_lora_weights=False)
    peft.inject_adapter_in_model(config, model.image_tower)
    model.eval()
    with_lora = model.encode_image(signals)
    with_lora.sum().backward()
    lora_grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
    assert len(lora_grads) >= 4 and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert not close(with_lora.detach(), before)  # LoRA is live in eval mode (no fused fast path)

    merge_lora(model.image_tower)
    with torch.no_grad():
        merged = model.encode_image(signals)
    assert close(merged, with_lora.detach())
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("ecg_clip", tmp_path / "saved")
    with torch.no_grad():
        assert close(rebuilt.encode_image(signals), merged)
        assert torch.equal(rebuilt.encode_texts(TEXTS), model.encode_texts(TEXTS))
