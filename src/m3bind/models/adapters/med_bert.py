"""MGCA's text encoder: the BERT of BLIP's ``med.py``, used in text-only mode.

It is a standard post-LayerNorm BERT with two differences from Hugging Face's ``BertModel``,
and the module names below follow ``med.py`` so MGCA's checkpoint keys load one to one:

* the embeddings have NO token-type table: word + position embeddings, LayerNorm, dropout;
* the attention mask is added as ``(1 - mask) * -10000`` (not the dtype's minimum).

``med.py`` also builds cross-attention layers (``add_cross_attention: true`` in MGCA's
``bert_config.json``) that text-only mode never calls; they are not built here and their
checkpoint keys are ignored by the MGCA adapter. No pooler (MGCA uses
``add_pooling_layer=False``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator
from torch import Tensor, nn

# med.py's additive value for masked (padding) positions.
_MASKED_SCORE = -10000.0


class MedBertConfig(BaseModel):
    """Sizes of the text encoder; defaults are MGCA's ``configs/bert_config.json`` (Bio_ClinicalBERT, 6 layers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: PositiveInt = 28996
    hidden_size: PositiveInt = 768
    num_layers: PositiveInt = 6
    num_heads: PositiveInt = 12
    intermediate_size: PositiveInt = 3072
    max_position_embeddings: PositiveInt = 512
    layer_norm_eps: PositiveFloat = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0

    @model_validator(mode="after")
    def _heads_divide_width(self) -> MedBertConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class MedBertEmbeddings(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class MedBertSelfAttention(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        query, key, value = (self._split_heads(layer(hidden)) for layer in (self.query, self.key, self.value))
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]) + additive_mask
        context = self.dropout(scores.softmax(dim=-1)) @ value
        batch, _, length, _ = context.shape
        return context.transpose(1, 2).reshape(batch, length, -1)


class MedBertSelfOutput(nn.Module):
    """Dense + dropout + residual LayerNorm (also the shape of the feed-forward output)."""

    def __init__(self, in_features: int, config: MedBertConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class MedBertAttention(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.self = MedBertSelfAttention(config)
        self.output = MedBertSelfOutput(config.hidden_size, config)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        return self.output(self.self(hidden, additive_mask), hidden)


class MedBertIntermediate(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return F.gelu(self.dense(hidden))  # "gelu" in the config: the exact (erf) GELU


class MedBertLayer(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.attention = MedBertAttention(config)
        self.intermediate = MedBertIntermediate(config)
        self.output = MedBertSelfOutput(config.intermediate_size, config)

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        attended = self.attention(hidden, additive_mask)
        return self.output(self.intermediate(attended), attended)


class MedBertEncoder(nn.Module):
    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(MedBertLayer(config) for _ in range(config.num_layers))

    def forward(self, hidden: Tensor, additive_mask: Tensor) -> Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask)
        return hidden


class MedBertModel(nn.Module):
    """``med.py``'s ``BertModel`` in ``mode="text"`` without pooler: token ids -> last hidden states."""

    def __init__(self, config: MedBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = MedBertEmbeddings(config)
        self.encoder = MedBertEncoder(config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """``(B, L)`` ids, mask (1 = token, 0 = padding) and position ids -> ``(B, L, hidden)``."""
        hidden = self.embeddings(input_ids, position_ids)
        mask = attention_mask[:, None, None, :].to(hidden.dtype)
        return self.encoder(hidden, (1.0 - mask) * _MASKED_SCORE)


def sequential_positions(input_ids: Tensor) -> Tensor:
    """Position ids 0, 1, 2, ... for every row (what a BERT normally uses)."""
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
