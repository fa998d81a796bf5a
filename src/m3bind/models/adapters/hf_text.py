"""Hugging Face BERT-family text towers from local folders (never downloaded).

The published models load their text encoders by hub name (``emilyalsentzer/Bio_ClinicalBERT``,
``microsoft/BiomedVLP-CXR-BERT-specialized``). Here the user points an option at a local copy
of that repository instead. Only its ``config.json`` (the architecture) and tokenizer files are
read: the text weights come from the CLIP checkpoint itself, which fine-tuned them.

Lower-casing: Bio_ClinicalBERT ships no ``tokenizer_config.json``, so transformers falls back
to ``do_lower_case=True`` although the vocabulary is cased; MGCA, FLAIR and the M3Bind code all
used that default, so it is kept (``lowercase=None``). CT-CLIP asks for lower-casing explicitly.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from transformers import AutoConfig, AutoTokenizer, BertConfig, PretrainedConfig, PreTrainedTokenizerBase

from m3bind.errors import CheckpointError, ConfigError

TEXT_MODEL_DIR = "text_model"
TOKENIZER_DIR = "tokenizer"


def require_folder(path: str | Path | None, option: str, adapter: str, hint: str) -> Path:
    """The folder an option names; a clear error when the option is unset or the folder is absent."""
    if path is None:
        raise ConfigError(f"model type '{adapter}' needs options.{option}: {hint}")
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: folder for options.{option} of model type '{adapter}' not found ({hint})")
    return folder


def load_text_config(folder: Path) -> PretrainedConfig:
    """The architecture config of a local Hugging Face model folder (its ``config.json``)."""
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder}: cannot read config.json: {error}") from error


def load_bert_config(folder: Path) -> BertConfig:
    """A BERT config from a local folder; refuses other architectures."""
    config = load_text_config(folder)
    if not isinstance(config, BertConfig):
        raise CheckpointError(f"{folder}: config.json describes a '{config.model_type}' model; a BERT model "
                              "is expected")
    return config


def load_tokenizer(folder: Path, lowercase: bool | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a local folder; ``lowercase`` overrides its own ``do_lower_case`` when given."""
    extra = {} if lowercase is None else {"do_lower_case": lowercase}
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **extra)
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
