"""FLAIR (jusiro/FLAIR, retina fundus): ResNet-50 + Bio_ClinicalBERT, 512-d projections.

What the adapter reproduces (``flair/modeling/model.py``):

* image: torchvision ResNet-50 with ``fc`` = Identity -> 2048-d average-pooled feature; input is
  RGB in [0, 1] without mean/std normalisation, longest side 512, zero-padded right/bottom
  (:class:`~m3bind.data.preprocess_specs.RetinaPreprocess`).
* text: Hugging Face ``BertModel`` (Bio_ClinicalBERT, 12 layers, with pooler weights) called with
  ``output_hidden_states``; the text feature is the mean over ALL token positions, padding
  included (no mask), of hidden states 1, 2 and 12, then the mean of those three. The tokenizer
  pads to the longest text of the batch (max 77 tokens), so, exactly as in FLAIR, a text's
  embedding depends on the other texts of its batch.
* projections (``ProjectionLayer``): L2-normalise, Linear(->512, no bias), L2-normalise; both sides.
* temperature: ``logit_scale`` clamped to [0, 4.6052] before ``exp`` (FLAIR's ``compute_logits``).

Checkpoints: the legacy ``flair_resnet.pth`` (a ``torch.save`` of the state dict), or the folder
of ``FLAIRModel.from_pretrained("jusiro2/FLAIR")`` (``model.safetensors``), or any
``.safetensors`` file with the same keys: ``vision_model.model.*``,
``vision_model.projection_head_vision.projection.weight``, ``text_model.model.*``,
``text_model.projection_head_text.projection.weight``, ``logit_scale``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn
from transformers import BertModel

from m3bind.data.preprocess_specs import RetinaPreprocess
from m3bind.errors import CheckpointError
from m3bind.models.adapters import checkpoint_io, hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.adapters.resnet import RESNET_LORA_TARGETS, resnet50_trunk
from m3bind.models.text import BERT_LORA_TARGETS
from m3bind.models.weights import load_state_strict

# FLAIR clamps its log logit scale to [0, log(100)] before exponentiating.
MAX_LOG_LOGIT_SCALE = 4.6052
# Files tried, in order, when ``path`` is a folder (the Hugging Face mixin writes model.safetensors).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "flair_resnet.pth")
FLAIR_UNUSED_KEYS: tuple[str, ...] = (checkpoint_io.POSITION_IDS_PATTERN,)


class FLAIROptions(AdapterOptions):
    """``options:`` of ``type: flair``."""

    path_fields: ClassVar[tuple[str, ...]] = ("text_model",)

    modality: str = Field("retina", min_length=1)
    text_model: str | None = Field(None, description="Local copy of emilyalsentzer/Bio_ClinicalBERT "
                                   "(config.json + vocab.txt); its weights are not used.")
    proj_dim: PositiveInt = Field(512, description="Width of the projections.")
    max_length: PositiveInt = Field(77, description="Token limit (FLAIR sets model_max_length 77).")
    image_size: PositiveInt = Field(512, description="Canvas side of the preprocessing.")


class ProjectionLayer(nn.Module):
    """FLAIR's projection head: normalise, project (no bias), normalise."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.projection = nn.Linear(in_features, out_features, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.projection(F.normalize(features, dim=-1)), dim=-1)


class FLAIRVisionModel(nn.Module):
    def __init__(self, proj_dim: int):
        super().__init__()
        self.model, features = resnet50_trunk()
        self.projection_head_vision = ProjectionLayer(features, proj_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.projection_head_vision(self.model(images))


class FLAIRTextModel(nn.Module):
    def __init__(self, bert: BertModel, proj_dim: int):
        super().__init__()
        self.model = bert
        self.projection_head_text = ProjectionLayer(bert.config.hidden_size, proj_dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden_states = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                   output_hidden_states=True).hidden_states
        # (B, 3, L, H): hidden states 1, 2 and the last; mean over tokens (padding included), then layers.
        layers = torch.stack([hidden_states[1], hidden_states[2], hidden_states[-1]], dim=1)
        return self.projection_head_text(layers.mean(dim=2).mean(dim=1))


class FLAIRNetwork(nn.Module):
    """FLAIRModel's modules under their original names."""

    def __init__(self, bert: BertModel, proj_dim: int):
        super().__init__()
        self.vision_model = FLAIRVisionModel(proj_dim)
        self.text_model = FLAIRTextModel(bert, proj_dim)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))


class FLAIRAdapter(AdapterModel):
    """FLAIR as a :class:`~m3bind.models.base.ModalityModel` (native width 512)."""

    model_type = "flair"
    options_class = FLAIROptions
    text_lora_targets = BERT_LORA_TARGETS
    image_lora_targets = RESNET_LORA_TARGETS

    def __init__(self, options: FLAIROptions, bert: BertModel, tokenizer):
        super().__init__(options)
        self.tokenizer = tokenizer
        self.native_dim = options.proj_dim
        self.network = FLAIRNetwork(bert, options.proj_dim)
        self.preprocess = self.options_preprocess(options)

    @classmethod
    def options_preprocess(cls, options: FLAIROptions) -> RetinaPreprocess:
        return RetinaPreprocess(size=options.image_size)

    @classmethod
    def build(cls, options: FLAIROptions) -> FLAIRAdapter:
        folder = hf_text.require_folder(options.text_model, "text_model", cls.model_type,
                                        "a local copy of emilyalsentzer/Bio_ClinicalBERT")
        bert = BertModel(hf_text.load_bert_config(folder), add_pooling_layer=True)
        return cls(options, bert, hf_text.load_tokenizer(folder))

    @classmethod
    def from_checkpoint(cls, path: Path, options: FLAIROptions) -> FLAIRAdapter:
        weights = _weights_file(path)
        model = cls.build(options)  # first, so that option problems show before a long read
        state = checkpoint_io.extract_state_dict(checkpoint_io.read_checkpoint(weights), weights)
        load_state_strict(model.network, state, weights, ignore=FLAIR_UNUSED_KEYS)
        return model.eval()

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.vision_model.model

    @property
    def text_tower(self) -> nn.Module:
        return self.network.text_model.model

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        # padding=True in FLAIR: to the longest text of the batch, which the pooling then averages over.
        return hf_text.tokenize(self.tokenizer, texts, self.options.max_length, padding="longest")

    def encode_image(self, images: Tensor) -> Tensor:
        return self.network.vision_model(images)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        return self.network.text_model(tokens["input_ids"], tokens["attention_mask"])

    def logit_scale(self) -> Tensor:
        return self.network.logit_scale.clamp(0.0, MAX_LOG_LOGIT_SCALE).exp()

    def save_assets(self, directory: Path) -> dict[str, str]:
        return {"text_model": hf_text.save_text_model(directory, self.network.text_model.model.config,
                                                      self.tokenizer)}


def _weights_file(path: Path) -> Path:
    """``path`` itself, or the weights file inside a FLAIR folder."""
    if not path.is_dir():
        return path
    for name in WEIGHT_FILES:
        if (path / name).exists():
            return path / name
    raise CheckpointError(f"{path}: no FLAIR weights file in the folder (looked for {', '.join(WEIGHT_FILES)})")
