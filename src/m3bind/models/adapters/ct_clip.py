"""CT-CLIP (ibrahimethemhamamci/CT-CLIP, chest CT): CTViT + CXR-BERT, 512-d latents.

What the adapter reproduces (``CT_CLIP/ct_clip/ct_clip.py`` with the settings of
``scripts/run_zero_shot.py``):

* image: ``visual_transformer`` = CTViT (:mod:`.ctvit`) on ``(B, 1, 240, 480, 480)`` volumes
  (HU clipped to [-1000, 1000] and divided by 1000, 1.5 x 0.75 x 0.75 mm spacing,
  :class:`~m3bind.data.preprocess_specs.CTPreprocess`) -> quantised tokens ``(B, 24, 24, 24, 512)``;
  mean over the depth axis -> ``(B, 24, 24, 512)``; flattened (h, w, channel order) to 294,912
  values; ``to_visual_latent`` Linear (no bias) -> 512; L2 normalisation.
* text: ``text_transformer`` = Hugging Face ``BertModel`` (CXR-BERT-specialized, with pooler
  weights), [CLS] hidden state -> ``to_text_latent`` Linear(768 -> 512, no bias) -> L2.
  Tokenizer: CXR-BERT's, lower-casing, max 512 tokens. CT-CLIP pads to 512; with the attention
  mask the [CLS] output is the same when padding to the longest text, which is what is done here.
* temperature: ``temperature.exp()`` (initialised at 1).

Checkpoint: ``CT-CLIP_v2.pt``, a plain ``torch.save`` of the state dict (or a trainer save
``{"model": ..., "optim": ...}``). Ignored by name: the unused CLOOB copies
``to_*_latent_extra``, CTViT's decoder parts, and ``text_transformer.embeddings.position_ids``,
which transformers >= 4.31 no longer registers (CT-CLIP issue #47).
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

from m3bind.data.preprocess_specs import CTPreprocess
from m3bind.models.adapters import checkpoint_io, hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.adapters.ctvit import CTViT, CTViTConfig
from m3bind.models.text import BERT_LORA_TARGETS
from m3bind.models.weights import load_state_strict

CT_CLIP_UNUSED_KEYS: tuple[str, ...] = (
    "to_text_latent_extra.*",                     # CLOOB extra projections (extra_latent_projection=False)
    "to_visual_latent_extra.*",
    "visual_transformer.to_patch_emb_first_frame.*",  # CTViT decoder / first-frame parts, not used to embed
    "visual_transformer.to_pixels_first_frame.*",
    "visual_transformer.to_pixels.*",
    checkpoint_io.POSITION_IDS_PATTERN,
)


class CTCLIPOptions(AdapterOptions):
    """``options:`` of ``type: ct_clip``."""

    path_fields: ClassVar[tuple[str, ...]] = ("text_model",)

    modality: str = Field("ct", min_length=1)
    text_model: str | None = Field(None, description="Local copy of microsoft/BiomedVLP-CXR-BERT-specialized "
                                   "(config.json + vocab.txt); its weights are not used.")
    dim_latent: PositiveInt = Field(512, description="Width of the shared image-text latents.")
    frames: PositiveInt = Field(240, description="Slices per volume after preprocessing.")
    max_length: PositiveInt = Field(512, description="Token limit of the text encoder.")
    ctvit: CTViTConfig = Field(default_factory=CTViTConfig)


class CTCLIPNetwork(nn.Module):
    """CTCLIP's modules used for embeddings, under their original names."""

    def __init__(self, options: CTCLIPOptions, bert: BertModel):
        super().__init__()
        grid = options.ctvit.grid_size
        self.text_transformer = bert
        self.visual_transformer = CTViT(options.ctvit)
        self.to_text_latent = nn.Linear(bert.config.hidden_size, options.dim_latent, bias=False)
        self.to_visual_latent = nn.Linear(grid * grid * options.ctvit.dim, options.dim_latent, bias=False)
        self.temperature = nn.Parameter(torch.tensor(1.0))


class CTCLIPAdapter(AdapterModel):
    """CT-CLIP as a :class:`~m3bind.models.base.ModalityModel` (native width 512)."""

    model_type = "ct_clip"
    options_class = CTCLIPOptions
    text_lora_targets = BERT_LORA_TARGETS
    image_lora_targets = ("to_q", "to_kv")

    def __init__(self, options: CTCLIPOptions, bert: BertModel, tokenizer):
        super().__init__(options)
        self.tokenizer = tokenizer
        self.native_dim = options.dim_latent
        self.network = CTCLIPNetwork(options, bert)
        self.preprocess = self.options_preprocess(options)

    @classmethod
    def options_preprocess(cls, options: CTCLIPOptions) -> CTPreprocess:
        side = options.ctvit.image_size
        return CTPreprocess(shape=(options.frames, side, side))

    @classmethod
    def build(cls, options: CTCLIPOptions) -> CTCLIPAdapter:
        folder = hf_text.require_folder(options.text_model, "text_model", cls.model_type,
                                        "a local copy of microsoft/BiomedVLP-CXR-BERT-specialized")
        bert = BertModel(hf_text.load_bert_config(folder), add_pooling_layer=True)
        # CT-CLIP builds its tokenizer with do_lower_case=True.
        return cls(options, bert, hf_text.load_tokenizer(folder, lowercase=True))

    @classmethod
    def from_checkpoint(cls, path: Path, options: CTCLIPOptions) -> CTCLIPAdapter:
        model = cls.build(options)  # first, so that option problems show before a long read
        state = checkpoint_io.extract_state_dict(checkpoint_io.read_checkpoint(path), path)
        load_state_strict(model.network, state, path, ignore=CT_CLIP_UNUSED_KEYS)
        return model.eval()

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.visual_transformer

    @property
    def text_tower(self) -> nn.Module:
        return self.network.text_transformer

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return hf_text.tokenize(self.tokenizer, texts, self.options.max_length)

    def encode_image(self, images: Tensor) -> Tensor:
        tokens = self.network.visual_transformer(images)  # (B, t, h, w, d)
        pooled = tokens.mean(dim=1).reshape(tokens.shape[0], -1)
        return F.normalize(self.network.to_visual_latent(pooled), dim=-1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        hidden = self.network.text_transformer(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]).last_hidden_state
        return F.normalize(self.network.to_text_latent(hidden[:, 0]), dim=-1)

    def logit_scale(self) -> Tensor:
        return self.network.temperature.exp()

    def save_assets(self, directory: Path) -> dict[str, str]:
        return {"text_model": hf_text.save_text_model(directory, self.network.text_transformer.config,
                                                      self.tokenizer)}
