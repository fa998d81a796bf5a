"""MGCA (HKU-MedAI/MGCA, chest X-ray): Lightning ``.ckpt`` with a ViT-B/16 or ResNet-50 image encoder.

What the adapter reproduces (from ``mgca/models/backbones/encoder.py`` and ``mgca_module.py``):

* image: BLIP-style ViT-B/16 (224 px, width 768, 12 blocks, LayerNorm eps 1e-6), feature =
  [CLS] token after the final norm; or torchvision ResNet-50, input upsampled to 299x299
  (bilinear, ``align_corners=True``), average-pooled 2048-d feature. The ViT is timm's
  ``VisionTransformer``: its parameter names (``patch_embed.proj``, ``cls_token``,
  ``pos_embed``, ``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``, ``norm``) and computation are
  those of BLIP's ``vits.py``, so ``img_encoder_q.model.*`` loads one to one.
* text: the 6-layer Bio_ClinicalBERT of BLIP's ``med.py`` (:mod:`.med_bert`), [CLS] token of
  the last layer. MGCA calls ``self.model(ids, attn_mask, token_type)``, and ``med.py``'s third
  positional argument is ``position_ids``: the all-zero token-type ids become the position ids,
  so every token was trained with position embedding 0. ``text_positions: as_trained``
  (default) reproduces this; ``sequential`` gives the usual 0, 1, 2, ... positions.
* both sides: ``GlobalEmbedding`` = Linear(->2048), BatchNorm, ReLU, Linear(->emb_dim),
  BatchNorm(affine=False), then L2 normalisation; emb_dim is 128 in the released models. The
  BatchNorms use their running statistics (eval mode), so one prompt embeds like a batch.
* temperature: fixed 0.07 (not learned).
* text preparation: reports were lower-cased, split into sentences, reduced to ``\\w+`` ASCII
  tokens, and one-word sentences dropped (``pretrain_dataset.py``); ``clean_text`` applies the
  same to every text before Bio_ClinicalBERT's tokenizer (max 112 tokens).

Keys the checkpoint holds for MGCA's token-level and prototype losses (``local_embed``,
``*_local_atten_layer``, ``prototype_layer``) and ``med.py``'s unused cross-attention layers are
ignored by name (:data:`MGCA_UNUSED_KEYS`); anything else missing or extra is an error.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from m3bind.data.preprocess_specs import XrayPreprocess
from m3bind.errors import ConfigError
from m3bind.models.adapters import checkpoint_io, hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.adapters.med_bert import MedBertConfig, MedBertModel, sequential_positions
from m3bind.models.adapters.resnet import RESNET_LORA_TARGETS, resnet50_trunk
from m3bind.models.text import BERT_LORA_TARGETS
from m3bind.models.weights import load_state_strict

MGCA_TEMPERATURE = 0.07
TOKENIZER_HINT = "a local copy of emilyalsentzer/Bio_ClinicalBERT (vocab.txt)"
# ResNet-50 inputs are upsampled to this side before the trunk (encoder.py resnet_forward).
RESNET_INPUT_SIZE = 299

MGCA_UNUSED_KEYS: tuple[str, ...] = (
    "img_encoder_q.local_embed.*",            # token-level (local) heads
    "text_encoder_q.local_embed.*",
    "patch_local_atten_layer.*",              # local alignment attention
    "word_local_atten_layer.*",
    "prototype_layer.*",                      # prototype (SwAV-style) head
    "text_encoder_q.model.encoder.layer.*.crossattention.*",  # med.py cross-attention, unused in text mode
    "text_encoder_q.model.embeddings.position_ids",           # a buffer; positions are computed
)


class ViTSizes(BaseModel):
    """Sizes of MGCA's ViT; defaults are ViT-B/16 at 224 px."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: PositiveInt = 224
    patch_size: PositiveInt = 16
    width: PositiveInt = 768
    depth: PositiveInt = 12
    heads: PositiveInt = 12


class MGCAOptions(AdapterOptions):
    """``options:`` of ``type: mgca``. Only ``tokenizer`` is required for the released checkpoints."""

    path_fields: ClassVar[tuple[str, ...]] = ("tokenizer",)

    modality: str = Field("xray", min_length=1)
    vision: Literal["vit_base", "resnet_50"] = Field(
        "vit_base", description="Image encoder; the released file names say which (default: the "
        "checkpoint's hyper-parameter img_encoder when present).")
    tokenizer: str | None = Field(None, description="Local folder with Bio_ClinicalBERT's vocab.txt "
                                  "(a copy of huggingface.co/emilyalsentzer/Bio_ClinicalBERT).")
    emb_dim: PositiveInt = Field(128, description="Width of the global embeddings.")
    global_hidden: PositiveInt = Field(2048, description="Hidden width of GlobalEmbedding.")
    max_length: PositiveInt = Field(112, description="Token limit, [CLS] and [SEP] included.")
    text_positions: Literal["as_trained", "sequential"] = "as_trained"
    clean_text: bool = Field(True, description="Lower-case and keep only \\w+ tokens, as MGCA's "
                             "training reports were.")
    text: MedBertConfig = Field(default_factory=MedBertConfig)
    vit: ViTSizes = Field(default_factory=ViTSizes)


class GlobalEmbedding(nn.Module):
    """MGCA's projection head; ``head`` indices 0, 1, 3, 4 carry the checkpoint's weights."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
            nn.BatchNorm1d(output_dim, affine=False),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.head(features)


class MGCAImageEncoder(nn.Module):
    """``img_encoder_q``: backbone (``model``) + ``global_embed``."""

    def __init__(self, options: MGCAOptions):
        super().__init__()
        self.vision = options.vision
        if options.vision == "vit_base":
            sizes = options.vit
            self.model: nn.Module = VisionTransformer(
                img_size=sizes.image_size, patch_size=sizes.patch_size, embed_dim=sizes.width, depth=sizes.depth,
                num_heads=sizes.heads, qkv_bias=True, num_classes=0, global_pool="token")
            feature_dim = sizes.width
        else:
            self.model, feature_dim = resnet50_trunk()
        self.global_embed = GlobalEmbedding(feature_dim, options.global_hidden, options.emb_dim)

    def features(self, images: Tensor) -> Tensor:
        """The backbone's global feature: ViT [CLS] after the final norm, or ResNet average pool."""
        if self.vision == "vit_base":
            return self.model.forward_features(images)[:, 0]
        upsampled = F.interpolate(images, size=(RESNET_INPUT_SIZE, RESNET_INPUT_SIZE), mode="bilinear",
                                  align_corners=True)
        return self.model(upsampled)

    def forward(self, images: Tensor) -> Tensor:
        return self.global_embed(self.features(images))


class MGCATextEncoder(nn.Module):
    """``text_encoder_q``: med.py BERT (``model``) + ``global_embed``."""

    def __init__(self, options: MGCAOptions):
        super().__init__()
        self.sequential_positions = options.text_positions == "sequential"
        self.model = MedBertModel(options.text)
        self.global_embed = GlobalEmbedding(options.text.hidden_size, options.global_hidden, options.emb_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = sequential_positions(input_ids) if self.sequential_positions else torch.zeros_like(input_ids)
        hidden = self.model(input_ids, attention_mask, positions)
        return self.global_embed(hidden[:, 0])


class MGCANetwork(nn.Module):
    """The parts of MGCA's LightningModule that compute global embeddings, under their original names."""

    def __init__(self, options: MGCAOptions):
        super().__init__()
        self.img_encoder_q = MGCAImageEncoder(options)
        self.text_encoder_q = MGCATextEncoder(options)


def clean_report_text(text: str) -> str:
    """MGCA's report preparation: sentences -> lower-cased ``\\w+`` ASCII tokens, one-word sentences dropped.

    One-word sentences are kept when dropping them would leave nothing (a one-word prompt).
    """
    pieces = re.split(r"[0-9]+\.", text.replace("\n", " ").replace("\ufffd\ufffd", " "))
    sentences = [sentence for piece in pieces for sentence in piece.split(".")]
    token_lists = []
    for sentence in sentences:
        tokens = [token.encode("ascii", "ignore").decode("ascii") for token in re.findall(r"\w+", sentence.lower())]
        tokens = [token for token in tokens if token]
        if tokens:
            token_lists.append(tokens)
    kept = [tokens for tokens in token_lists if len(tokens) > 1] or token_lists
    return " ".join(" ".join(tokens) for tokens in kept)


class MGCAAdapter(AdapterModel):
    """MGCA as a :class:`~m3bind.models.base.ModalityModel` (native width ``emb_dim``, 128)."""

    model_type = "mgca"
    options_class = MGCAOptions
    text_lora_targets = BERT_LORA_TARGETS

    def __init__(self, options: MGCAOptions, tokenizer):
        super().__init__(options)
        self.tokenizer = tokenizer
        self.native_dim = options.emb_dim
        self.network = MGCANetwork(options)
        # The BLIP ViT fuses q, k, v in one Linear; ResNet-50 gets LoRA on its 3x3 convolutions.
        self.image_lora_targets = ("qkv",) if options.vision == "vit_base" else RESNET_LORA_TARGETS
        self.preprocess = self.options_preprocess(options)

    @classmethod
    def options_preprocess(cls, options: MGCAOptions) -> XrayPreprocess:
        # from_checkpoint refuses options that disagree with the checkpoint's hyperparameters, so
        # the options alone decide the image size.
        image_size = options.vit.image_size if options.vision == "vit_base" else 224
        # MGCA: resize the longest side to 256, pad, center-crop 224 (scaled alike for other sizes).
        return XrayPreprocess(size=image_size, resize=round(image_size * 256 / 224), channels=3)

    @classmethod
    def build(cls, options: MGCAOptions) -> MGCAAdapter:
        folder = hf_text.require_folder(options.tokenizer, "tokenizer", cls.model_type, TOKENIZER_HINT)
        tokenizer = hf_text.load_tokenizer(folder)
        if len(tokenizer) > options.text.vocab_size:
            raise ConfigError(f"{folder}: the tokenizer has {len(tokenizer)} tokens but options.text.vocab_size is "
                              f"{options.text.vocab_size}; its last ids would fall outside the embedding table")
        return cls(options, tokenizer)

    @classmethod
    def from_checkpoint(cls, path: Path, options: MGCAOptions) -> MGCAAdapter:
        hf_text.require_folder(options.tokenizer, "tokenizer", cls.model_type, TOKENIZER_HINT)  # before a long read
        checkpoint = checkpoint_io.read_checkpoint(path)
        options = _agree_with_hyperparameters(options, checkpoint, path)
        state = checkpoint_io.extract_state_dict(checkpoint, path)
        model = cls.build(options)
        load_state_strict(model.network, state, path, ignore=MGCA_UNUSED_KEYS)
        return model.eval()

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.img_encoder_q.model

    @property
    def text_tower(self) -> nn.Module:
        return self.network.text_encoder_q.model

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of texts, not a single string")
        if self.options.clean_text:
            texts = [clean_report_text(text) for text in texts]
        # MGCA pads to 112; with its attention mask, padding to the longest text gives the same result.
        return hf_text.tokenize(self.tokenizer, texts, self.options.max_length)

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.network.img_encoder_q(images), dim=-1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        embedded = self.network.text_encoder_q(tokens["input_ids"], tokens["attention_mask"])
        return F.normalize(embedded, dim=-1)

    def logit_scale(self) -> Tensor:
        return torch.tensor(1.0 / MGCA_TEMPERATURE, device=self.device)

    def save_assets(self, directory: Path) -> dict[str, str]:
        return {"tokenizer": hf_text.save_tokenizer(directory, self.tokenizer)}


def _agree_with_hyperparameters(options: MGCAOptions, checkpoint: object, path: Path) -> MGCAOptions:
    """Take ``vision`` and ``emb_dim`` from the Lightning hyper-parameters unless the config sets them.

    A config value that contradicts the checkpoint is an error rather than a silent choice.
    """
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping):
        return options
    updates = {}
    for option, hparam in (("vision", "img_encoder"), ("emb_dim", "emb_dim")):
        if hparam not in hparams:
            continue
        stored = hparams[hparam]
        if option in options.model_fields_set and getattr(options, option) != stored:
            raise ConfigError(f"{path}: options.{option} is {getattr(options, option)!r} but the checkpoint was "
                              f"trained with {hparam}={stored!r}")
        updates[option] = stored
    try:
        return MGCAOptions.model_validate({**options.model_dump(), **updates})
    except ValueError as error:
        raise ConfigError(f"{path}: unsupported hyper-parameters {updates}: {error}") from None
