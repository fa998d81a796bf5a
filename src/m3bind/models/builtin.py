"""Built-in CLIP models, small enough to pre-train on a CPU: stand-ins for MGCA, CT-CLIP, FLAIR,
ECG-CLIP and QuiltNet in the demo.

A :class:`BuiltinCLIP` is an image encoder (:mod:`m3bind.models.encoders`, chosen by the
modality's signal kind), a small BERT text tower with the modality's own WordPiece
tokenizer (:mod:`m3bind.models.text`) and a learnable CLIP temperature. Native widths
differ like the published models (X-ray 128 like MGCA, the others 256) so binding heads
have real work to do.

A saved model is a folder::

    model.safetensors   all weights
    config.json         {"format_version", "model_type", "model": BuiltinModelConfig, "preprocess": spec}
    tokenizer/          a standard Hugging Face tokenizer folder

:meth:`BuiltinCLIP.from_pretrained` rebuilds it without any training code.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import Tensor, nn
from transformers import BertTokenizer, PreTrainedTokenizerFast

from m3bind.errors import CheckpointError, ConfigError
from m3bind.modalities import BUILTIN_MODALITIES
from m3bind.models.base import ModalityModel
from m3bind.models.descriptions import (Description, PreprocessDescription, build_preprocess, describe_preprocess,
                                        read_description, write_description)
from m3bind.models.encoders import ConvEncoder, SignalEncoder
from m3bind.models.sentence import (MINILM_MAX_LENGTH, SentenceTextTower, check_fingerprint, load_minilm_tokenizer,
                                    minilm_fingerprint)
from m3bind.models.text import SPECIAL_TOKENS, BertTextTower, small_bert_config, train_tokenizer
from m3bind.models.weights import load_state_strict, read_weights, save_weights
from m3bind.signal_kinds import SignalKind

MODEL_TYPE = "m3bind-builtin-clip"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"

# Same cap as CLIP: a temperature below 0.01 makes the softmax too sharp to train.
MAX_LOGIT_SCALE = 100.0

# Number of axes of a batch, per signal kind: (B,C,H,W), (B,1,D,H,W), (B,leads,T).
_BATCH_NDIM: dict[SignalKind, int] = {SignalKind.IMAGE_2D: 4, SignalKind.VOLUME_3D: 5, SignalKind.SIGNAL_1D: 3}


class BuiltinModelConfig(BaseModel):
    """Sizes of one built-in CLIP model. Unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: str = Field(min_length=1, description="modality name, e.g. 'xray' or a user name")
    kind: SignalKind = Field(description="signal kind; picks the image encoder")
    in_channels: PositiveInt = Field(description="image channels, or ECG leads")
    width: PositiveInt = Field(description="channels of the first conv stage (doubling per stage), "
                                           "or token width of the signal encoder")
    depth: PositiveInt = Field(description="conv stages (2D/3D) or transformer blocks (1D)")
    image_heads: PositiveInt = Field(4, description="attention heads of the signal encoder (1D only)")
    native_dim: PositiveInt = Field(description="width of the image and text embeddings")
    text_hidden_size: PositiveInt = 128
    text_layers: PositiveInt = 2
    text_heads: PositiveInt = 4
    text_intermediate_size: PositiveInt = 256
    vocab_size: int = Field(2000, gt=len(SPECIAL_TOKENS), description="upper bound of the WordPiece vocabulary")
    max_length: int = Field(128, ge=3, description="longest token sequence, [CLS] and [SEP] included")
    init_temperature: float = Field(0.07, gt=1.0 / MAX_LOGIT_SCALE, le=1.0, description="initial CLIP temperature")
    text_backbone: Literal["scratch", "minilm"] = Field(
        "scratch", description="'scratch': a small BERT with the modality's own WordPiece vocabulary, trained from "
                               "scratch; 'minilm': frozen all-MiniLM-L6-v2 sentence vectors under a trainable MLP "
                               "(text_hidden_size wide), whose language prior links the wording of different "
                               "modalities' reports (see m3bind.models.sentence)")

    @model_validator(mode="after")
    def _heads_divide_widths(self) -> BuiltinModelConfig:
        if self.text_hidden_size % self.text_heads:
            raise ValueError(f"text_hidden_size {self.text_hidden_size} is not divisible by "
                             f"text_heads {self.text_heads}")
        if self.kind is SignalKind.SIGNAL_1D and (self.width % self.image_heads or self.width % 2):
            raise ValueError(f"width {self.width} must be even and divisible by image_heads {self.image_heads}")
        return self


class BuiltinDescription(Description):
    """``config.json`` of a saved built-in model (beside its weights and tokenizer)."""

    version_field: ClassVar[str | None] = "format_version"
    folder_kind: ClassVar[str] = "a built-in m3bind model folder"
    trailing_newline: ClassVar[bool] = True

    format_version: int = 1
    model_type: Literal["m3bind-builtin-clip"] = MODEL_TYPE
    model: BuiltinModelConfig
    preprocess: PreprocessDescription | None = None
    text_backbone_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    omit_if_default: ClassVar[tuple[str, ...]] = ("model.text_backbone", "text_backbone_sha256")


def builtin_config(modality: str, demo: bool = True, text_backbone: str = "scratch") -> BuiltinModelConfig:
    """Default sizes of the built-in model for a built-in modality.

    ``demo=True`` fits the synthetic cohort (64x64 images, 32x64x64 volumes, 12x1000 ECGs)
    and a 2-core CPU; ``demo=False`` is a few times larger for real data on a GPU.
    ``text_backbone``: ``minilm`` reads up to MiniLM's own 256 tokens at any size (truncating a
    real report at 128 would drop its impression, which comes last; the cohort's reports are
    all shorter). For a user-defined modality, build a :class:`BuiltinModelConfig` directly.
    """
    info = BUILTIN_MODALITIES.get(modality)
    if info is None:
        raise ConfigError(f"no default built-in model for modality '{modality}'; built-in modalities are "
                          f"{', '.join(BUILTIN_MODALITIES)} (write a BuiltinModelConfig for others)")
    # (width, depth) per kind; 2D/3D depth = downsampling stages, 1D depth = transformer blocks.
    image_sizes = {
        SignalKind.IMAGE_2D: (16, 4) if demo else (32, 5),
        SignalKind.VOLUME_3D: (16, 3) if demo else (32, 4),
        SignalKind.SIGNAL_1D: (64, 2) if demo else (128, 4),
    }
    width, depth = image_sizes[info.kind]
    text = (dict(text_hidden_size=128, text_layers=2, text_heads=4, text_intermediate_size=256,
                 vocab_size=2000, max_length=128) if demo else
            dict(text_hidden_size=256, text_layers=4, text_heads=4, text_intermediate_size=1024,
                 vocab_size=8000, max_length=256))
    if text_backbone == "minilm":
        text["max_length"] = MINILM_MAX_LENGTH
    return BuiltinModelConfig(
        modality=modality, kind=info.kind, in_channels=info.channels, width=width, depth=depth,
        native_dim=info.builtin_native_dim, text_backbone=text_backbone, **text)


def _init_seed(modality: str, seed: int) -> int:
    """A seed per (modality, seed): stable across processes, unlike ``hash()``."""
    return zlib.crc32(f"{modality}:{seed}".encode())


def _build_image_encoder(config: BuiltinModelConfig) -> nn.Module:
    if config.kind is SignalKind.SIGNAL_1D:
        return SignalEncoder(config.in_channels, config.width, config.depth, config.native_dim, config.image_heads)
    spatial_dims = 2 if config.kind is SignalKind.IMAGE_2D else 3
    return ConvEncoder(spatial_dims, config.in_channels, config.width, config.depth, config.native_dim)


def _build_text_tower(config: BuiltinModelConfig, pad_token_id: int) -> nn.Module:
    if config.text_backbone == "minilm":
        return SentenceTextTower(config.text_hidden_size, config.native_dim)
    bert_config = small_bert_config(
        vocab_size=config.vocab_size, hidden_size=config.text_hidden_size, num_layers=config.text_layers,
        num_heads=config.text_heads, intermediate_size=config.text_intermediate_size,
        max_length=config.max_length, pad_token_id=pad_token_id)
    return BertTextTower(bert_config, config.native_dim)


class BuiltinCLIP(ModalityModel):
    """Image encoder + BERT text tower + learnable logit scale, for one modality.

    Weights are initialised from a seed derived from ``(config.modality, seed)``, inside a
    forked RNG so building a model never changes the caller's random state. Two modalities
    therefore start with unrelated text towers, as independently trained models do.
    """

    model_type = "builtin"
    trains_from_scratch = True

    def __init__(self, config: BuiltinModelConfig, tokenizer: PreTrainedTokenizerFast,
                 preprocess: BaseModel | None = None, seed: int = 0):
        super().__init__()
        if config.text_backbone == "scratch" and len(tokenizer) > config.vocab_size:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but vocab_size is {config.vocab_size}")
        self.config = config
        self.modality = config.modality
        self.native_dim = config.native_dim
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_init_seed(config.modality, seed))
            self.image_encoder = _build_image_encoder(config)
            self.text_encoder = _build_text_tower(config, tokenizer.pad_token_id)
        self.image_lora_targets = self.image_encoder.lora_targets
        self.text_lora_targets = self.text_encoder.lora_targets
        # Stored as a log so the learned multiplier stays positive (CLIP's parameterisation).
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))

    @property
    def image_tower(self) -> nn.Module:
        return self.image_encoder

    @property
    def text_tower(self) -> nn.Module:
        return self.text_encoder

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Own WordPiece tokenizer; pads to the longest text, truncates at ``config.max_length``."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of texts, not a single string")
        if isinstance(self.text_encoder, SentenceTextTower):
            return self.text_encoder.sentence.tokenize(self.tokenizer, texts, self.config.max_length)
        encoded = self.tokenizer(list(texts), padding="longest", truncation=True,
                                 max_length=self.config.max_length, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def encode_image(self, images: Tensor) -> Tensor:
        self._check_images(images)
        return F.normalize(self.image_encoder(images), dim=-1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        return F.normalize(self.text_encoder(tokens["input_ids"], tokens["attention_mask"]), dim=-1)

    def logit_scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def _check_images(self, images: Tensor) -> None:
        """Fail with the expected layout rather than a cryptic convolution error."""
        ndim = _BATCH_NDIM[self.config.kind]
        if images.ndim != ndim or images.shape[1] != self.config.in_channels:
            layout = {4: "(B, C, H, W)", 5: "(B, 1, D, H, W)", 3: "(B, leads, T)"}[ndim]
            raise ValueError(f"'{self.modality}' model expects {layout} input with {self.config.in_channels} "
                             f"channel(s), got shape {tuple(images.shape)}")

    # --- persistence ------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors``, ``config.json`` and ``tokenizer/`` into ``directory``.

        Merge (or remove) any peft LoRA adapters first: their weights are not part of the
        built-in layout, and :meth:`from_pretrained` rejects them as unexpected keys.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self, directory / WEIGHTS_FILE)
        fingerprint = minilm_fingerprint() if self.config.text_backbone == "minilm" else None
        write_description(directory / CONFIG_FILE,
                          BuiltinDescription(model=self.config, preprocess=describe_preprocess(self.preprocess),
                                             text_backbone_sha256=fingerprint))
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BuiltinCLIP:
        """Rebuild a model written by :meth:`save_pretrained`, in eval mode.

        Raises :class:`CheckpointError` when a file is missing or unreadable, the config does
        not validate, or the weights do not fit (naming the keys and the file).
        """
        directory = Path(directory)
        description = read_description(directory / CONFIG_FILE, BuiltinDescription)
        if description.model.text_backbone == "minilm":
            check_fingerprint(description.text_backbone_sha256, directory / CONFIG_FILE)
        if not (directory / TOKENIZER_DIR).is_dir():
            raise CheckpointError(f"{directory / TOKENIZER_DIR}: tokenizer folder not found")
        try:
            tokenizer = BertTokenizer.from_pretrained(str(directory / TOKENIZER_DIR), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - a damaged file raises JSON, Unicode, key or Rust errors
            raise CheckpointError(f"{directory / TOKENIZER_DIR}: cannot load the tokenizer "
                                  f"({type(error).__name__}: {error})") from error
        model = cls(description.model, tokenizer, build_preprocess(description.preprocess, directory / CONFIG_FILE))
        load_state_strict(model, read_weights(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
        return model.eval()


def build_builtin_model(modality: str, texts_for_tokenizer: Iterable[str], config: BuiltinModelConfig | None = None,
                        seed: int = 0, preprocess: BaseModel | None = None) -> BuiltinCLIP:
    """A freshly initialised built-in model for ``modality`` with a tokenizer trained on ``texts_for_tokenizer``.

    ``config`` defaults to :func:`builtin_config` (demo sizes). ``preprocess`` is the spec
    :meth:`BuiltinCLIP.transform` will use (typically
    ``m3bind.data.transforms.default_preprocess(modality, demo=True)``); it may be left out
    when tensors are fed directly.
    """
    config = config or builtin_config(modality)
    if config.modality != modality:
        raise ConfigError(f"config is for modality '{config.modality}', not '{modality}'")
    if config.text_backbone == "minilm":
        tokenizer = load_minilm_tokenizer()
    else:
        tokenizer = train_tokenizer(texts_for_tokenizer, vocab_size=config.vocab_size, max_length=config.max_length)
    return BuiltinCLIP(config, tokenizer, preprocess, seed=seed)
