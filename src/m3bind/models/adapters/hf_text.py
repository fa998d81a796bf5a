"""Hugging Face BERT-family text towers from local folders (never downloaded).

The published models load their text encoders by hub name (``emilyalsentzer/Bio_ClinicalBERT``,
``microsoft/BiomedVLP-CXR-BERT-specialized``). Here the user points an option at a local copy
of that repository instead. Only its ``config.json`` (the architecture) and tokenizer files are
read: the text weights come from the CLIP checkpoint itself, which fine-tuned them.

Lower-casing: Bio_ClinicalBERT ships no ``tokenizer_config.json``, so transformers falls back
to ``do_lower_case=True`` although the vocabulary is cased; MGCA, FLAIR and the M3Bind code all
used that default, so it is kept (``lowercase=None``). CT-CLIP asks for lower-casing explicitly.

Custom code: CXR-BERT's repository declares its own model type (``cxr-bert``) and tokenizer
class (``CXRBertTokenizer``) with ``auto_map`` entries that point at Python files in the
folder. Those classes only add a projection size to ``BertConfig`` and nothing to
``BertTokenizer`` (CT-CLIP itself loads them as ``BertModel`` / ``BertTokenizer``), so they are
read as plain BERT here and the folder's code is never run. Any other custom-code folder is
refused, and transformers is never asked to trust remote code (it would otherwise prompt on a
terminal).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from transformers import AutoTokenizer, BertConfig, BertTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from m3bind.errors import CheckpointError, ConfigError

TEXT_MODEL_DIR = "text_model"
TOKENIZER_DIR = "tokenizer"

# Custom model types / tokenizer classes that are BERT's own with nothing changed that matters here.
BERT_DERIVED_MODEL_TYPES = frozenset({"cxr-bert"})
BERT_DERIVED_TOKENIZERS = frozenset({"CXRBertTokenizer"})
# Entries of a custom-code config.json that name its Python classes rather than the architecture.
_CUSTOM_CODE_KEYS = ("model_type", "auto_map", "architectures")


def require_folder(path: str | Path | None, option: str, adapter: str, hint: str) -> Path:
    """The folder an option names; a clear error when the option is unset or the folder is absent."""
    if path is None:
        raise ConfigError(f"model type '{adapter}' needs options.{option}: {hint}")
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: folder for options.{option} of model type '{adapter}' not found ({hint})")
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_bert_config(folder: Path) -> BertConfig:
    """The BERT architecture of a local Hugging Face model folder (its ``config.json``).

    ``model_type`` must be ``bert`` or a BERT-derived custom type (CXR-BERT's ``cxr-bert``);
    other architectures are refused, and no code from the folder runs.
    """
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
    data = _read_json(path)
    model_type = data.get("model_type")
    if model_type != "bert" and model_type not in BERT_DERIVED_MODEL_TYPES:
        raise CheckpointError(f"{path}: describes a '{model_type}' model; a BERT model is expected")
    try:
        return BertConfig.from_dict({k: v for k, v in data.items() if k not in _CUSTOM_CODE_KEYS})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a valid BERT config: {error}") from error


def load_tokenizer(folder: Path, lowercase: bool | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder; ``lowercase`` overrides its own ``do_lower_case`` when given."""
    extra: dict[str, Any] = {} if lowercase is None else {"do_lower_case": lowercase}
    settings = folder / "tokenizer_config.json"
    custom_class = _read_json(settings).get("tokenizer_class") if settings.exists() else None
    try:
        if custom_class in BERT_DERIVED_TOKENIZERS:
            return BertTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False, **extra)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder}: cannot load a tokenizer: {error}") from error


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
             padding: str = "longest") -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (long, CPU) for ``texts``, truncated at ``max_length``."""
    if isinstance(texts, str):
        raise TypeError("tokenize expects a sequence of texts, not a single string")
    encoded = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length,
                        return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def save_text_model(directory: Path, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """Write a text-model folder (config + tokenizer, no weights) and return its name relative to ``directory``."""
    folder = directory / TEXT_MODEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return TEXT_MODEL_DIR


def save_tokenizer(directory: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """Write a tokenizer folder and return its name relative to ``directory``."""
    tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
    return TOKENIZER_DIR
