"""Shared builders for the adapter tests: tiny Hugging Face BERT folders and weight helpers.

No tests live here; the ``test_adapters_*`` modules import these helpers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from m3bind.models.adapters import checkpoint_writers

# A WordPiece vocabulary big enough for the test sentences; mixed case on purpose (see lowercase tests).
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "the", "heart", "is", "normal", "size", "lung",
         "##s", "clear", "no", "effusion", "small", "left", "pleural", "sinus", "rhythm", "a", "fundus",
         "photograph", "of", "mild", "diabetic", "retinopathy", "nodule", "present", "not", "emphysema",
         "carcinoma", "tumor", "cardiomegaly", "and", "with", "atrial", "fibrillation", "Heart", "HEART"]

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=64)


def write_bert_folder(folder: Path, vocab: list[str] = VOCAB, **sizes) -> Path:
    """A tiny Bio_ClinicalBERT-layout folder (``config.json`` + ``vocab.txt``) of ``TINY_BERT`` sizes."""
    return checkpoint_writers.write_bert_folder(folder, vocab, {**TINY_BERT, **sizes})


def perturbed_state(module: torch.nn.Module, seed: int, scale: float = 0.05) -> dict[str, Tensor]:
    """``module``'s state dict with every float tensor moved away from its initial value.

    BatchNorm running variances stay positive; integer buffers are kept. Used so that a
    freshly built model (different random init) can only match when every weight was loaded.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in module.state_dict().items():
        value = value.detach().clone()
        if value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator) * scale
            value = (value.abs() + 0.5 + noise.abs()) if name.endswith("running_var") else value + noise
        state[name] = value
    return state


def batchnorm_eval(x: Tensor, state: dict[str, Tensor], prefix: str, affine: bool = True, eps: float = 1e-5) -> Tensor:
    """BatchNorm1d in eval mode written out: (x - running_mean) / sqrt(running_var + eps) [* w + b]."""
    y = (x - state[prefix + "running_mean"]) / torch.sqrt(state[prefix + "running_var"] + eps)
    return y * state[prefix + "weight"] + state[prefix + "bias"] if affine else y


def close(a: Tensor, b: Tensor, atol: float = 1e-5) -> bool:
    """Equal up to float32 rounding (different kernels sum in different orders)."""
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)
