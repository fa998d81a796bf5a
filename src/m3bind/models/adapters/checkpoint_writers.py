"""Writing checkpoints in the published models' original on-disk layouts (the mirror of :mod:`.checkpoint_io`).

These are the layouts the owners distribute, so a file written here takes exactly the path a
downloaded one takes through its adapter:

===============  ==========================================================================
layout           what is on disk
===============  ==========================================================================
Lightning        MGCA's ``.ckpt``: ``{"epoch", "global_step", "pytorch-lightning_version",
                 "state_dict", "hyper_parameters", "optimizer_states", ...}``
state dict       ``torch.save`` of a flat state dict: CT-CLIP's ``CT-CLIP_v2.pt``, FLAIR's
                 ``flair_resnet.pth`` (which still holds BERT's old ``position_ids`` buffer), ECG-CLIP
open_clip        a folder with ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` (QuiltNet-B-32)
BERT folder      a hub copy of ``emilyalsentzer/Bio_ClinicalBERT``: ``config.json`` + ``vocab.txt``
                 (no ``tokenizer_config.json``), weights as ``pytorch_model.bin`` with
                 ``BertForPreTraining`` keys (``bert.*``, ``cls.*``)
CXR-BERT folder  a hub copy of ``microsoft/BiomedVLP-CXR-BERT-specialized``: its ``config.json``
                 names the custom ``cxr-bert`` model type with ``auto_map`` entries for remote
                 code, and ``tokenizer_config.json`` the custom ``CXRBertTokenizer``
===============  ==========================================================================

Used by :mod:`.random_checkpoints` (dry runs of a config without the real weights) and the
adapter tests.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# Where CLIP-style training leaves log(logit scale): at the clamp log(100). Written instead of
# open_clip's initial log(1/0.07), so that a loader which skipped the value would be visible.
TRAINED_LOG_LOGIT_SCALE = math.log(100.0)

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def write_bert_folder(folder: Path, vocab: Sequence[str], sizes: Mapping[str, Any]) -> Path:
    """A Bio_ClinicalBERT-layout folder: ``config.json`` (a ``BertConfig`` with ``sizes``) + ``vocab.txt``.

    Like that repository it has no ``tokenizer_config.json``, so transformers' default
    lower-casing applies.
    """
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertConfig(vocab_size=len(vocab), **sizes).save_pretrained(str(folder))
    return folder


def write_bert_weights(folder: Path, seed: int = 0) -> Path:
    """Random weights for the BERT in ``folder`` as ``pytorch_model.bin`` with BertForPreTraining keys.

    Bio_ClinicalBERT's hub copy stores its MLM/NSP checkpoint that way; ``AutoModel`` strips
    the ``bert.`` prefix and skips the ``cls.*`` heads when loading it.
    """
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    model = BertForPreTraining(BertConfig.from_pretrained(str(folder)))
    path = folder / "pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path


def write_cxr_bert_folder(folder: Path, vocab: Sequence[str], sizes: Mapping[str, Any]) -> Path:
    """A CXR-BERT-specialized-layout folder (custom-code config and tokenizer class), without weights.

    CT-CLIP reads only its architecture and vocabulary; its weights are in the CT-CLIP file.
    """
    from transformers import BertConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = BertConfig(vocab_size=len(vocab), **sizes).to_dict()
    config.update(model_type="cxr-bert", architectures=["CXRBertModel"], projection_size=128,
                  auto_map={"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                            "AutoModel": "modeling_cxrbert.CXRBertModel"})
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer_config = {"do_lower_case": True, "model_max_length": config["max_position_embeddings"],
                        "tokenizer_class": "CXRBertTokenizer",
                        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
               "mask_token": "[MASK]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder


def write_lightning_checkpoint(path: Path, state: Mapping[str, Tensor], hyper_parameters: Mapping[str, Any],
                               extras: Mapping[str, Tensor] | None = None) -> Path:
    """A PyTorch Lightning ``.ckpt`` (MGCA's layout): the module's state dict plus the trainer's bookkeeping.

    ``extras`` are further state-dict entries the original module holds (heads used only in training).
    """
    checkpoint = {"epoch": 9, "global_step": 1000, "pytorch-lightning_version": "1.5.10",
                  "state_dict": {**state, **(extras or {})},
                  "hyper_parameters": dict(hyper_parameters),
                  "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}}],
                  "lr_schedulers": [{"last_epoch": 9}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_state_dict(path: Path, state: Mapping[str, Tensor]) -> Path:
    """A plain ``torch.save`` of a state dict (CT-CLIP, FLAIR's ``.pth``, ECG-CLIP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    return path


def write_open_clip_folder(folder: Path, config: Mapping[str, Any], *, seed: int = 0,
                           log_logit_scale: float = TRAINED_LOG_LOGIT_SCALE, **create_kwargs) -> Path:
    """An open_clip model folder as the hub holds it: ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``.

    The model is open_clip's own, built from ``config`` with random weights (``create_kwargs``
    go to ``open_clip.create_model``, e.g. ``pretrained_text=False`` for a Hugging Face text tower).
    """
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, **create_kwargs)
    with torch.no_grad():
        model.logit_scale.fill_(log_logit_scale)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
