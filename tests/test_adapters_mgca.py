"""MGCA adapter: Lightning .ckpt layout, BLIP ViT / ResNet-50 image side, med.py text side, key checks."""
from __future__ import annotations

import peft
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet50
from transformers import BertConfig, BertModel

from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.adapters import load_adapter, load_saved_adapter
from m3bind.models.adapters.checkpoint_writers import write_lightning_checkpoint
from m3bind.models.adapters.mgca import MGCAAdapter, clean_report_text
from test_adapters_fixtures import VOCAB, batchnorm_eval, close, perturbed_state, write_bert_folder

TEXT = dict(vocab_size=len(VOCAB), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
            max_position_embeddings=64)
VIT = dict(image_size=32, patch_size=16, width=64, depth=2, heads=2)
OPTIONS = dict(tokenizer="bio_clinicalbert", text=TEXT, vit=VIT, emb_dim=16, global_hidden=48)
TEXTS = ["The heart is normal size.", "Small left pleural effusion, no cardiomegaly."]
# What MGCA's training code adds to the checkpoint besides the global-embedding parts.
UNUSED_EXTRAS = {
    "prototype_layer.weight": torch.randn(5, 16),
    "patch_local_atten_layer.in_proj_weight": torch.randn(48, 16),
    "img_encoder_q.local_embed.head.0.weight": torch.randn(48, 64, 1),
    "text_encoder_q.local_embed.head.0.weight": torch.randn(48, 32, 1),
    "text_encoder_q.model.encoder.layer.0.crossattention.self.query.weight": torch.randn(32, 32),
    "text_encoder_q.model.embeddings.position_ids": torch.arange(64)[None],
}


def write_mgca_checkpoint(tmp_path, vision="vit_base", extras=UNUSED_EXTRAS, drop=(), hparams=None):
    """A Lightning-style MGCA checkpoint of a tiny model; returns (path, saved state dict)."""
    write_bert_folder(tmp_path / "bio_clinicalbert")
    torch.manual_seed(0)
    options = MGCAAdapter.parse_options({**OPTIONS, "vision": vision}, tmp_path)
    state = perturbed_state(MGCAAdapter.build(options).network, seed=1)
    for key in drop:
        del state[key]
    path = write_lightning_checkpoint(
        tmp_path / f"mgca_{vision}.ckpt", state,
        hparams or {"img_encoder": vision, "emb_dim": 16, "learning_rate": 2e-5}, extras)
    return path, state


def reference_vit_cls(state, images):
    """BLIP's vits.py forward written out: patches, [CLS], positions, pre-norm blocks, final norm."""
    s = {k[len("img_encoder_q.model."):]: v for k, v in state.items() if k.startswith("img_encoder_q.model.")}
    width, heads, batch = VIT["width"], VIT["heads"], images.shape[0]
    x = F.conv2d(images, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=VIT["patch_size"])
    x = torch.cat([s["cls_token"].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + s["pos_embed"]
    n = x.shape[1]
    for i in range(VIT["depth"]):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, s[p + "attn.qkv.weight"], s[p + "attn.qkv.bias"]).reshape(
            batch, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (width // heads) ** -0.5).softmax(dim=-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, n, width)
        x = x + F.linear(h, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (width,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"])),
                         s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
    return F.layer_norm(x, (width,), s["norm.weight"], s["norm.bias"], eps=1e-6)[:, 0]


def reference_global_embed(features, state, prefix):
    """GlobalEmbedding in eval mode + L2 norm: Linear, BN, ReLU, Linear, BN(affine=False)."""
    head = prefix + "global_embed.head."
    h = F.linear(features, state[head + "0.weight"], state[head + "0.bias"])
    h = F.relu(batchnorm_eval(h, state, head + "1."))
    h = F.linear(h, state[head + "3.weight"], state[head + "3.bias"])
    return F.normalize(batchnorm_eval(h, state, head + "4.", affine=False), dim=-1)


def reference_text_cls(state, tokens, positions):
    """[CLS] of a Hugging Face BertModel given MGCA's text weights; token-type embeddings are zero
    because med.py has none."""
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    bert = BertModel(config, add_pooling_layer=False).eval()
    weights = {k[len("text_encoder_q.model."):]: v for k, v in state.items() if k.startswith("text_encoder_q.model.")}
    weights["embeddings.token_type_embeddings.weight"] = torch.zeros(2, 32)
    bert.load_state_dict(weights, strict=True)
    out = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
               token_type_ids=torch.zeros_like(tokens["input_ids"]), position_ids=positions)
    return out.last_hidden_state[:, 0]


def test_vit_checkpoint_matches_reference_forward(tmp_path):
    path, state = write_mgca_checkpoint(tmp_path)
    model = load_adapter("mgca", path, OPTIONS)
    images = torch.randn(3, 3, 32, 32)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        image_emb = model.encode_image(images)
        text_emb = model.encode_text(tokens)
        expected_image = reference_global_embed(reference_vit_cls(state, images), state, "img_encoder_q.")
        # MGCA passes token_type_ids (all zero) where med.py expects position_ids.
        zeros = torch.zeros_like(tokens["input_ids"])
        expected_text = reference_global_embed(reference_text_cls(state, tokens, zeros), state, "text_encoder_q.")
    assert image_emb.shape == (3, 16) and text_emb.shape == (2, 16)
    assert close(image_emb, expected_image) and close(text_emb, expected_text)
    assert model.native_dim == 16 and model.modality == "xray"
    assert model.logit_scale().item() == pytest.approx(1 / 0.07)
    # Batch composition does not matter (BatchNorm uses running statistics in eval mode).
    with torch.no_grad():
        assert close(model.encode_image(images[:1]), image_emb[:1])


def test_sequential_positions_option_changes_text_embedding(tmp_path):
    path, state = write_mgca_checkpoint(tmp_path)
    as_trained = load_adapter("mgca", path, OPTIONS)
    sequential = load_adapter("mgca", path, {**OPTIONS, "text_positions": "sequential"})
    tokens = as_trained.tokenize(TEXTS)
    with torch.no_grad():
        positions = torch.arange(tokens["input_ids"].shape[1]).expand_as(tokens["input_ids"])
        expected = reference_global_embed(reference_text_cls(state, tokens, positions), state, "text_encoder_q.")
        assert close(sequential.encode_text(tokens), expected)
        assert not close(as_trained.encode_text(tokens), expected)


def test_tokenizer_cleans_text_like_mgca_reports(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path)
    model = load_adapter("mgca", path, OPTIONS)
    tokens = model.tokenize(["The HEART is normal size."])
    # [CLS] the heart is normal size [SEP]: lower-cased, the full stop removed.
    assert tokens["input_ids"].tolist() == [[2, 7, 8, 9, 10, 11, 3]]
    assert clean_report_text("1. Heart size is normal.  2. No effusion!\nLungs clear.") == \
        "heart size is normal no effusion lungs clear"
    assert clean_report_text("Small effusion. Stable. Clear lungs") == "small effusion clear lungs"
    assert clean_report_text("Cardiomegaly.") == "cardiomegaly"  # a one-word prompt is kept


def test_resnet_checkpoint_matches_torchvision(tmp_path):
    path, state = write_mgca_checkpoint(tmp_path, vision="resnet_50",
                                        extras={"prototype_layer.weight": torch.randn(5, 16)})
    model = load_adapter("mgca", path, OPTIONS)
    assert model.image_lora_targets == ("conv2",)
    images = torch.randn(1, 3, 40, 40)
    reference = resnet50(weights=None)
    reference.fc = torch.nn.Identity()
    reference.load_state_dict({k[len("img_encoder_q.model."):]: v for k, v in state.items()
                               if k.startswith("img_encoder_q.model.")})
    with torch.no_grad():
        upsampled = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=True)
        expected = reference_global_embed(reference.eval()(upsampled), state, "img_encoder_q.")
        assert close(model.encode_image(images), expected, atol=1e-4)


def test_vision_and_emb_dim_come_from_hyperparameters(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="img_encoder='vit_base'"):
        load_adapter("mgca", path, {**OPTIONS, "vision": "resnet_50"})
    # Without hyper-parameters the option decides.
    path, _ = write_mgca_checkpoint(tmp_path, hparams={"learning_rate": 1e-4})
    assert load_adapter("mgca", path, OPTIONS).options.vision == "vit_base"


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path, drop=["text_encoder_q.global_embed.head.3.bias"],
                                    extras={**UNUSED_EXTRAS, "momentum_encoder.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError) as error:
        load_adapter("mgca", path, OPTIONS)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys: text_encoder_q.global_embed.head.3.bias" in message
    assert "unexpected keys: momentum_encoder.weight" in message
    assert "prototype_layer" not in message  # a documented unused part is not a problem


def test_shape_mismatches_are_named_with_both_shapes(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path, hparams={"img_encoder": "vit_base"})
    with pytest.raises(CheckpointError, match=r"img_encoder_q.global_embed.head.3.weight \(file \(16, 48\), "
                                              r"model \(32, 48\)\)"):
        load_adapter("mgca", path, {**OPTIONS, "emb_dim": 32})


def test_tokenizer_option_is_required_and_must_exist(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path)
    without = {k: v for k, v in OPTIONS.items() if k != "tokenizer"}
    with pytest.raises(ConfigError, match="options.tokenizer"):
        load_adapter("mgca", path, without)
    with pytest.raises(CheckpointError, match="nowhere"):
        load_adapter("mgca", path, {**OPTIONS, "tokenizer": "nowhere"})


def test_save_pretrained_round_trip_and_lora_targets(tmp_path):
    path, _ = write_mgca_checkpoint(tmp_path)
    model = load_adapter("mgca", path, OPTIONS)
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("mgca", tmp_path / "saved")
    images, tokens = torch.randn(2, 3, 32, 32), model.tokenize(TEXTS)
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(images), model.encode_image(images))
        assert torch.equal(rebuilt.encode_text(rebuilt.tokenize(TEXTS)), model.encode_text(tokens))
    assert rebuilt.preprocess == model.preprocess and rebuilt.preprocess.size == 32

    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.text_lora_targets))
    peft.inject_adapter_in_model(config, model.text_tower)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.image_lora_targets))
    peft.inject_adapter_in_model(config, model.image_tower)
    lora_layers = [name for name, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    # query + value in each of 2 text layers, the fused qkv in each of 2 ViT blocks.
    assert len(lora_layers) == 2 * 2 + 2
