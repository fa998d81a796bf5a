"""ECG-CLIP as the M3Bind authors' code defines it (``ECG_CLIP/encoder.py``, ``ECG_CLIP.py``).

No ECG-CLIP checkpoint is public and the authors' forward pass does not run (it calls an
undefined ``self.encoder`` and never pools the BERT output), so their module definitions are
taken as the specification and the gaps are filled as documented here:

* ECG encoder: ``value_embedding`` Linear(input_dim -> 512), learned ``position_embedding``
  (1, 5000, 512), learned ``cls_token``, ``transformer_encoder`` = 6 post-norm layers
  (8 heads, feed-forward 2048, ReLU, batch-first), output = the CLS token. Positions are added
  to the signal samples only and the CLS token is prepended afterwards: the table has exactly
  5000 rows, one per sample of a 10 s, 500 Hz record.
* How the 12 leads enter (the code does not say; ``input_dim=1`` means one value per step):
  ``lead_mode: channels`` (default) embeds the vector of all leads at each time step
  (``input_dim`` = number of leads); ``single`` feeds one lead (``lead_index``, 1 = lead II in
  the standard I, II, III, aVR, aVL, aVF, V1-V6 order) and ``mean`` the average of the leads,
  both with ``input_dim=1`` as in the authors' defaults.
* text: Hugging Face ``BertModel`` (Bio_ClinicalBERT, with pooler); ``text_pooling: cls``
  (default) takes the [CLS] hidden state, ``pooler`` BERT's tanh pooler output.
* projections: ``ecg_proj`` Linear(512, 512) and ``text_proj`` Linear(768, 512), both with bias,
  then L2 normalisation; ``logit_scale`` learned, initialised to log(1/0.07).

The layer loop is written out instead of calling ``nn.TransformerEncoder``: in eval mode that
module takes a fused fast path which reads the attention weights directly and would skip LoRA
layers wrapped around them. The parameter names are those of ``nn.TransformerEncoder``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn
from transformers import BertModel

from m3bind.data.preprocess_specs import ECGPreprocess
from m3bind.models.adapters import checkpoint_io, hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.text import BERT_LORA_TARGETS
from m3bind.models.weights import load_state_strict

ECG_UNUSED_KEYS: tuple[str, ...] = (checkpoint_io.POSITION_IDS_PATTERN,)


class ECGCLIPOptions(AdapterOptions):
    """``options:`` of ``type: ecg_clip``; defaults are the authors' ``ECGEncoder`` / ``ECGCLIP`` arguments."""

    path_fields: ClassVar[tuple[str, ...]] = ("text_model",)

    modality: str = Field("ecg", min_length=1)
    text_model: str | None = Field(None, description="Local copy of emilyalsentzer/Bio_ClinicalBERT "
                                   "(config.json + vocab.txt); its weights are not used.")
    leads: PositiveInt = Field(12, description="Leads of the input records.")
    lead_mode: Literal["channels", "single", "mean"] = "channels"
    lead_index: NonNegativeInt = Field(1, description="Lead fed in 'single' mode (1 = lead II).")
    fs: PositiveFloat = Field(500.0, description="Sampling rate of the inputs, Hz.")
    d_model: PositiveInt = 512
    nhead: PositiveInt = 8
    num_layers: PositiveInt = 6
    dim_feedforward: PositiveInt = 2048
    dropout: float = Field(0.1, ge=0, lt=1)
    max_seq_len: PositiveInt = Field(5000, description="Rows of the position table: samples per record.")
    proj_dim: PositiveInt = 512
    text_pooling: Literal["cls", "pooler"] = "cls"
    max_length: PositiveInt = Field(512, description="Token limit of the text encoder.")

    @model_validator(mode="after")
    def _consistent(self) -> ECGCLIPOptions:
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if self.lead_mode == "single" and self.lead_index >= self.leads:
            raise ValueError(f"lead_index {self.lead_index} is out of range for {self.leads} leads")
        return self

    @property
    def input_dim(self) -> int:
        """Values per time step the value embedding takes."""
        return self.leads if self.lead_mode == "channels" else 1


class ECGEncoderLayer(nn.Module):
    """One post-norm Transformer layer with ``nn.TransformerEncoderLayer``'s parameter names (ReLU)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        attended = self.self_attn(x, x, x, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        fed = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm2(x + self.dropout2(fed))


class ECGTransformer(nn.Module):
    """Stands where the authors' ``nn.TransformerEncoder`` stands (same ``layers.N.*`` keys)."""

    def __init__(self, options: ECGCLIPOptions):
        super().__init__()
        self.layers = nn.ModuleList(
            ECGEncoderLayer(options.d_model, options.nhead, options.dim_feedforward, options.dropout)
            for _ in range(options.num_layers))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ECGEncoder(nn.Module):
    """The authors' ``ECGEncoder``: value embedding + positions, CLS token, Transformer, CLS output."""

    def __init__(self, options: ECGCLIPOptions):
        super().__init__()
        self.lead_mode = options.lead_mode
        self.lead_index = options.lead_index
        self.value_embedding = nn.Linear(options.input_dim, options.d_model)
        self.position_embedding = nn.Parameter(torch.randn(1, options.max_seq_len, options.d_model))
        self.cls_token = nn.Parameter(torch.randn(1, 1, options.d_model))
        self.transformer_encoder = ECGTransformer(options)

    def forward(self, signals: Tensor) -> Tensor:
        """``(B, leads, T)`` -> ``(B, d_model)``."""
        if self.lead_mode == "single":
            signals = signals[:, self.lead_index:self.lead_index + 1]
        elif self.lead_mode == "mean":
            signals = signals.mean(dim=1, keepdim=True)
        steps = signals.transpose(1, 2)  # (B, T, input_dim): one token per sample
        length = steps.shape[1]
        tokens = self.value_embedding(steps) + self.position_embedding[:, :length]
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.transformer_encoder(tokens)[:, 0]


class ECGCLIPNetwork(nn.Module):
    """The authors' ``ECGCLIP`` modules under their original names."""

    def __init__(self, options: ECGCLIPOptions, bert: BertModel):
        super().__init__()
        self.ecg_encoder = ECGEncoder(options)
        self.text_encoder = bert
        self.ecg_proj = nn.Linear(options.d_model, options.proj_dim)
        self.text_proj = nn.Linear(bert.config.hidden_size, options.proj_dim)
        self.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))


class ECGCLIPAdapter(AdapterModel):
    """ECG-CLIP as a :class:`~m3bind.models.base.ModalityModel` (native width 512)."""

    model_type = "ecg_clip"
    options_class = ECGCLIPOptions
    text_lora_targets = BERT_LORA_TARGETS
    # peft wraps nn.MultiheadAttention as a whole (its in_proj is a bare parameter, not a Linear).
    image_lora_targets = ("self_attn",)

    def __init__(self, options: ECGCLIPOptions, bert: BertModel, tokenizer):
        super().__init__(options)
        self.tokenizer = tokenizer
        self.native_dim = options.proj_dim
        self.network = ECGCLIPNetwork(options, bert)
        self.preprocess = self.options_preprocess(options)

    @classmethod
    def options_preprocess(cls, options: ECGCLIPOptions) -> ECGPreprocess:
        return ECGPreprocess(leads=options.leads, fs=options.fs, duration_s=options.max_seq_len / options.fs)

    @classmethod
    def build(cls, options: ECGCLIPOptions) -> ECGCLIPAdapter:
        folder = hf_text.require_folder(options.text_model, "text_model", cls.model_type,
                                        "a local copy of emilyalsentzer/Bio_ClinicalBERT")
        bert = BertModel(hf_text.load_bert_config(folder), add_pooling_layer=True)
        return cls(options, bert, hf_text.load_tokenizer(folder))

    @classmethod
    def from_checkpoint(cls, path: Path, options: ECGCLIPOptions) -> ECGCLIPAdapter:
        model = cls.build(options)  # first, so that option problems show before a long read
        state = checkpoint_io.extract_state_dict(checkpoint_io.read_checkpoint(path), path)
        load_state_strict(model.network, state, path, ignore=ECG_UNUSED_KEYS)
        return model.eval()

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.ecg_encoder

    @property
    def text_tower(self) -> nn.Module:
        return self.network.text_encoder

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        return hf_text.tokenize(self.tokenizer, texts, self.options.max_length)

    def encode_image(self, images: Tensor) -> Tensor:
        if images.ndim != 3 or images.shape[1] != self.options.leads:
            raise ValueError(f"ECG-CLIP expects (B, {self.options.leads}, T) input, got {tuple(images.shape)}")
        if images.shape[2] > self.options.max_seq_len:
            raise ValueError(f"ECG has {images.shape[2]} samples; the position table holds "
                             f"{self.options.max_seq_len}")
        return F.normalize(self.network.ecg_proj(self.network.ecg_encoder(images)), dim=-1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        output = self.network.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        pooled = output.pooler_output if self.options.text_pooling == "pooler" else output.last_hidden_state[:, 0]
        return F.normalize(self.network.text_proj(pooled), dim=-1)

    def logit_scale(self) -> Tensor:
        return self.network.logit_scale.exp()

    def save_assets(self, directory: Path) -> dict[str, str]:
        return {"text_model": hf_text.save_text_model(directory, self.network.text_encoder.config, self.tokenizer)}
