"""CT-CLIP adapter: CTViT + CXR-BERT key layout, the documented volume/text computation, VQ, LoRA."""
from __future__ import annotations

import peft
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from m3bind.errors import CheckpointError
from m3bind.models.adapters import load_adapter, load_saved_adapter
from m3bind.models.adapters.checkpoint_writers import write_state_dict
from m3bind.models.adapters.ct_clip import CTCLIPAdapter
from test_adapters_fixtures import TINY_BERT, VOCAB, close, perturbed_state, write_bert_folder

CTVIT = dict(dim=16, codebook_size=32, image_size=8, patch_size=4, temporal_patch_size=2, spatial_depth=2,
             temporal_depth=2, dim_head=8, heads=2)
OPTIONS = dict(text_model="cxr_bert", ctvit=CTVIT, dim_latent=12, frames=6, max_length=64)
TEXTS = ["Emphysema is present.", "Emphysema is not present."]
# Keys of the released file that embeddings never use (decoder, CLOOB copies, old BERT buffer).
UNUSED_EXTRAS = {
    "to_text_latent_extra.weight": torch.zeros(12, 32),
    "to_visual_latent_extra.weight": torch.zeros(12, 64),
    "visual_transformer.to_pixels.0.weight": torch.zeros(32, 16),
    "visual_transformer.to_patch_emb_first_frame.2.weight": torch.zeros(16, 16),
    "text_transformer.embeddings.position_ids": torch.arange(64)[None],
}


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory):
    """A tiny CT-CLIP state dict saved as CT-CLIP_v2.pt: (folder, path, state)."""
    tmp_path = tmp_path_factory.mktemp("ct_clip")
    write_bert_folder(tmp_path / "cxr_bert")
    torch.manual_seed(0)
    state = perturbed_state(CTCLIPAdapter.build(CTCLIPAdapter.parse_options(OPTIONS, tmp_path)).network,
                            seed=4, scale=0.1)
    return tmp_path, write_state_dict(tmp_path / "CT-CLIP_v2.pt", {**state, **UNUSED_EXTRAS}), state


def gain_norm(x, s, prefix):
    """attention.py's LayerNorm: gain ``gamma``, bias the buffer ``beta`` (zero in trained files)."""
    return F.layer_norm(x, x.shape[-1:], s[prefix + "gamma"], s[prefix + "beta"])


def reference_transformer(s, prefix, x, video_shape, bias=None):
    """transformer_maskgit's Transformer (PEG, attention, GEGLU feed-forward), written from attention.py."""
    b, t, h, w = video_shape
    depth = len({k[len(prefix + "layers."):].split(".")[0] for k in s if k.startswith(prefix + "layers.")})
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        # PEG: the flat tokens are read as (b, t, h, w, d) whatever their order, conv, read back.
        grid = x.reshape(b, t, h, w, -1).permute(0, 4, 1, 2, 3)
        grid = F.conv3d(F.pad(grid, (1, 1, 1, 1, 2, 0)), s[p + "0.dsconv.weight"], s[p + "0.dsconv.bias"],
                        groups=grid.shape[1])
        x = grid.permute(0, 2, 3, 4, 1).reshape(x.shape) + x
        # Attention: q from the normalised input, k and v from the raw input; cosine sim * 8.
        heads, dim_head = CTVIT["heads"], CTVIT["dim_head"]
        q = gain_norm(x, s, p + "1.norm.") @ s[p + "1.to_q.weight"].T
        k, v = (x @ s[p + "1.to_kv.weight"].T).chunk(2, dim=-1)
        q, k, v = (z.reshape(z.shape[0], z.shape[1], heads, dim_head).permute(0, 2, 1, 3) for z in (q, k, v))
        q = F.normalize(q, dim=-1) * s[p + "1.q_scale"]
        k = F.normalize(k, dim=-1) * s[p + "1.k_scale"]
        sim = torch.einsum("bhid,bhjd->bhij", q, k) * 8
        if bias is not None:
            sim = sim + bias
        out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v).permute(0, 2, 1, 3).flatten(2)
        x = out @ s[p + "1.to_out.weight"].T + x
        # GEGLU feed-forward.
        hidden = F.layer_norm(x, x.shape[-1:], s[p + "3.0.weight"], s[p + "3.0.bias"]) @ s[p + "3.1.weight"].T
        value, gate = hidden.chunk(2, dim=-1)
        x = (F.gelu(gate) * value) @ s[p + "3.4.weight"].T + x
    return gain_norm(x, s, prefix + "norm_out.")


def reference_image_embedding(state, volume):
    """CT-CLIP's image path: CTViT tokens -> VQ -> mean over depth -> flatten -> to_visual_latent -> l2norm."""
    s = {k[len("visual_transformer."):]: v for k, v in state.items() if k.startswith("visual_transformer.")}
    b, _, frames, side, _ = volume.shape
    pt, p = CTVIT["temporal_patch_size"], CTVIT["patch_size"]
    t, n = frames // pt, side // p
    # 'b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)', then LayerNorm, Linear, LayerNorm.
    patches = torch.stack([torch.stack([torch.stack([
        volume[:, :, ti * pt:(ti + 1) * pt, hi * p:(hi + 1) * p, wi * p:(wi + 1) * p].reshape(b, -1)
        for wi in range(n)], 1) for hi in range(n)], 1) for ti in range(t)], 1)
    tokens = F.layer_norm(patches, patches.shape[-1:], s["to_patch_emb.1.weight"], s["to_patch_emb.1.bias"])
    tokens = tokens @ s["to_patch_emb.2.weight"].T + s["to_patch_emb.2.bias"]
    tokens = F.layer_norm(tokens, tokens.shape[-1:], s["to_patch_emb.3.weight"], s["to_patch_emb.3.bias"])
    d = tokens.shape[-1]
    # Spatial relative position bias from log-spaced offsets.
    coords = torch.tensor([[i, j] for i in range(n) for j in range(n)], dtype=torch.float32)
    offsets = coords[:, None] - coords[None]
    rel = torch.sign(offsets) * torch.log(offsets.abs() + 1)
    rel = F.leaky_relu(rel @ s["spatial_rel_pos_bias.net.0.0.weight"].T + s["spatial_rel_pos_bias.net.0.0.bias"], 0.1)
    rel = F.leaky_relu(rel @ s["spatial_rel_pos_bias.net.1.0.weight"].T + s["spatial_rel_pos_bias.net.1.0.bias"], 0.1)
    bias = (rel @ s["spatial_rel_pos_bias.net.2.weight"].T + s["spatial_rel_pos_bias.net.2.bias"]).permute(2, 0, 1)
    video_shape = (b, t, n, n)
    x = reference_transformer(s, "enc_spatial_transformer.", tokens.reshape(b * t, n * n, d), video_shape, bias)
    x = x.reshape(b, t, n, n, d).permute(0, 2, 3, 1, 4).reshape(b * n * n, t, d)
    x = reference_transformer(s, "enc_temporal_transformer.", x, video_shape)
    x = x.reshape(b, n, n, t, d).permute(0, 3, 1, 2, 4)
    codebook = s["vq._codebook.embed"][0]
    index = (F.normalize(x, dim=-1) @ F.normalize(codebook, dim=-1).T).argmax(dim=-1)
    quantized = codebook[index]  # (b, t, h, w, d)
    return F.normalize(quantized.mean(dim=1).reshape(b, -1) @ state["to_visual_latent.weight"].T, dim=-1), quantized


def test_ct_clip_matches_reference_forward(ct_files):
    tmp_path, path, state = ct_files
    model = load_adapter("ct_clip", path, OPTIONS)
    volume = torch.randn(2, 1, 6, 8, 8)
    tokens = model.tokenize(TEXTS)
    with torch.no_grad():
        expected_image, expected_tokens = reference_image_embedding(state, volume)
        assert close(model.encode_image(volume), expected_image)
        quantized = model.network.visual_transformer(volume)
        assert torch.equal(quantized, expected_tokens)
        # Every output token is exactly a codebook row.
        codebook = state["visual_transformer.vq._codebook.embed"][0]
        assert bool((quantized.reshape(-1, 1, 16) == codebook[None]).all(-1).any(-1).all())

        bert = BertModel(BertConfig(vocab_size=len(VOCAB), **TINY_BERT), add_pooling_layer=True).eval()
        bert.load_state_dict({k[len("text_transformer."):]: v for k, v in state.items()
                              if k.startswith("text_transformer.")})
        cls = bert(**tokens).last_hidden_state[:, 0]
        assert close(model.encode_text(tokens), F.normalize(cls @ state["to_text_latent.weight"].T, dim=-1))
    assert model.logit_scale().item() == pytest.approx(float(state["temperature"].exp()))
    assert model.preprocess.output_shape() == (1, 6, 8, 8)
    # CT-CLIP lower-cases: upper-case words are found in the (lower-case) vocabulary.
    assert model.tokenize(["EMPHYSEMA"])["input_ids"].tolist() == [[2, VOCAB.index("emphysema"), 3]]


def test_volume_shape_is_checked(ct_files):
    model = load_adapter("ct_clip", ct_files[1], OPTIONS)
    with pytest.raises(ValueError, match="multiple of 2"):
        model.encode_image(torch.randn(1, 1, 5, 8, 8))
    with pytest.raises(ValueError, match="8x8 slices"):
        model.encode_image(torch.randn(1, 1, 6, 12, 12))


def test_image_lora_gets_gradients_through_the_quantiser(ct_files):
    model = load_adapter("ct_clip", ct_files[1], OPTIONS)
    config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.image_lora_targets))
    peft.inject_adapter_in_model(config, model.image_tower)
    peft.inject_adapter_in_model(peft.LoraConfig(r=2, lora_alpha=2, target_modules=list(model.text_lora_targets)),
                                 model.text_tower)
    lora_b = [p for name, p in model.image_tower.named_parameters() if "lora_B" in name]
    assert len(lora_b) == 2 * (CTVIT["spatial_depth"] + CTVIT["temporal_depth"])  # to_q and to_kv per layer
    model.eval()
    model.encode_image(torch.randn(1, 1, 6, 8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_unknown_and_missing_keys_are_named(ct_files):
    tmp_path, _, state = ct_files
    broken = {k: v for k, v in state.items() if k != "to_text_latent.weight"}
    broken["visual_transformer.dec_spatial_transformer.norm_out.gamma"] = torch.ones(16)
    torch.save({"model": broken, "optim": {}}, tmp_path / "trainer_save.pt")  # CTCLIPTrainer.save layout
    with pytest.raises(CheckpointError) as error:
        load_adapter("ct_clip", tmp_path / "trainer_save.pt", OPTIONS)
    assert "missing keys: to_text_latent.weight" in str(error.value)
    assert "unexpected keys: visual_transformer.dec_spatial_transformer.norm_out.gamma" in str(error.value)
    assert "trainer_save.pt" in str(error.value)


def test_save_and_rebuild(ct_files, tmp_path):
    model = load_adapter("ct_clip", ct_files[1], OPTIONS)
    model.save_pretrained(tmp_path / "saved")
    rebuilt = load_saved_adapter("ct_clip", tmp_path / "saved")
    volume = torch.randn(1, 1, 6, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(volume), model.encode_image(volume))
        assert torch.equal(rebuilt.encode_texts(["EMPHYSEMA is present."]),
                           model.encode_texts(["emphysema is present."]))
