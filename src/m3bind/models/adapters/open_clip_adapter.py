"""Any open_clip model from a local folder: ``open_clip_config.json`` + weights (QuiltNet, BiomedCLIP, ...).

The model is open_clip's own ``CLIP`` / ``CustomTextCLIP`` class built from the config's
``model_cfg``, so encoders, pooling (EOT token for CLIP text, [CLS] for BiomedCLIP's BERT) and
projections are open_clip's. What m3bind changes around it:

* nothing is downloaded: timm and Hugging Face base weights are never fetched
  (``timm_model_pretrained`` / ``hf_model_pretrained`` off), and a config whose text tower is a
  Hugging Face model (``hf_model_name``, e.g. BiomedCLIP's PubMedBERT) needs
  ``options.text_model``, a local copy of that model (its config.json and tokenizer files);
* weights are read with safetensors or ``torch.load(weights_only=True)`` and loaded strictly.
  open_clip's own compatibility conversions are applied first (old text-tower layout, scalar vs
  1-d ``logit_scale``, stale ``position_ids``); positional embeddings are NOT resized to another
  image size, so weights and config must belong together;
* preprocessing is :class:`~m3bind.data.preprocess_specs.PathologyPreprocess` with the config's size,
  mean and std, i.e. open_clip's eval transform (bicubic shortest-side resize, center crop,
  normalise). Other resize modes or interpolations in ``preprocess_cfg`` are not reproduced and
  trigger a warning.

Tokenizer: open_clip's CLIP BPE ``SimpleTokenizer`` (bundled with the package), or its
``HFTokenizer`` on ``options.text_model`` for Hugging Face text towers, with the config's
context length and ``tokenizer_kwargs``.
"""
from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from open_clip.model import CLIP, CustomTextCLIP, convert_to_custom_text_state_dict
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from pydantic import Field
from torch import Tensor, nn

from m3bind.data.preprocess_specs import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PathologyPreprocess
from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.adapters import checkpoint_io, hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.adapters.lora_targets import attention_lora_targets
from m3bind.models.weights import load_state_strict

CONFIG_FILE = "open_clip_config.json"
# Weight files tried in a model folder, in open_clip's order of preference.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")
# The preprocessing settings PathologyPreprocess reproduces exactly.
_SUPPORTED_PREPROCESS = {"interpolation": ("bicubic",), "resize_mode": ("shortest",)}


class OpenCLIPOptions(AdapterOptions):
    """``options:`` of ``type: open_clip``."""

    path_fields: ClassVar[tuple[str, ...]] = ("text_model",)

    modality: str = Field("pathology", min_length=1)
    text_model: str | None = Field(None, description="Local copy of the Hugging Face text model a config "
                                   "names in hf_model_name (config.json + tokenizer files).")
    weights: str | None = Field(None, description="Weights file name inside the model folder (default: "
                                "open_clip's preference order).")
    config: dict[str, Any] | None = Field(None, description="The open_clip_config.json content; read from "
                                          "the model folder when not given.")


class OpenCLIPAdapter(AdapterModel):
    """An open_clip model as a :class:`~m3bind.models.base.ModalityModel` (native width ``embed_dim``)."""

    model_type = "open_clip"
    options_class = OpenCLIPOptions

    def __init__(self, options: OpenCLIPOptions, network: nn.Module, tokenizer, preprocess: PathologyPreprocess):
        super().__init__(options)
        self.network = network
        self.tokenizer = tokenizer
        self.native_dim = int(options.config["model_cfg"]["embed_dim"])
        self.preprocess = preprocess
        self.text_lora_targets = attention_lora_targets(self.text_tower)
        self.image_lora_targets = attention_lora_targets(self.image_tower)

    @classmethod
    def build(cls, options: OpenCLIPOptions) -> OpenCLIPAdapter:
        if options.config is None or "model_cfg" not in options.config:
            raise ConfigError("open_clip options need the open_clip_config.json content (a 'model_cfg' entry)")
        model_cfg = copy.deepcopy(options.config["model_cfg"])
        text_cfg = model_cfg.setdefault("text_cfg", {})
        vision_cfg = model_cfg.setdefault("vision_cfg", {})
        if "multimodal_cfg" in model_cfg:
            raise ConfigError("open_clip CoCa models (multimodal_cfg) are not supported")
        vision_cfg["timm_model_pretrained"] = False  # never fetch timm base weights
        hf_text_tower = "hf_model_name" in text_cfg
        if hf_text_tower:
            folder = hf_text.require_folder(options.text_model, "text_model", cls.model_type,
                                            f"a local copy of {text_cfg['hf_model_name']}")
            text_cfg.update(hf_model_name=str(folder), hf_tokenizer_name=str(folder), hf_model_pretrained=False)
        custom_text = bool(model_cfg.pop("custom_text", False)) or hf_text_tower
        network = (CustomTextCLIP if custom_text else CLIP)(**model_cfg)
        return cls(options, network, _tokenizer(text_cfg), _preprocess(options.config, vision_cfg))

    @classmethod
    def checkpoint_preprocess(cls, path: Path, options: OpenCLIPOptions) -> PathologyPreprocess:
        folder = path if path.is_dir() else path.parent
        config = options.config if options.config is not None else _read_config(folder / CONFIG_FILE)
        return _preprocess(config, config["model_cfg"].get("vision_cfg", {}))

    @classmethod
    def from_checkpoint(cls, path: Path, options: OpenCLIPOptions) -> OpenCLIPAdapter:
        folder = path if path.is_dir() else path.parent
        weights = (folder / options.weights if options.weights else
                   (path if path.is_file() else _find_weights(folder)))
        if options.config is None:
            options = options.model_copy(update={"config": _read_config(folder / CONFIG_FILE)})
        model = cls.build(options)
        state = checkpoint_io.extract_state_dict(checkpoint_io.read_checkpoint(weights), weights)
        load_state_strict(model.network, _open_clip_compatible(model.network, state), weights)
        return model.eval()

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.visual

    @property
    def text_tower(self) -> nn.Module:
        # CLIP keeps its text modules at top level; its text transformer is the part LoRA adapts.
        return self.network.text if isinstance(self.network, CustomTextCLIP) else self.network.transformer

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize expects a sequence of texts, not a single string")
        input_ids = self.tokenizer(list(texts)).long()
        pad_id = getattr(getattr(self.tokenizer, "tokenizer", None), "pad_token_id", None) or 0
        return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long()}

    def encode_image(self, images: Tensor) -> Tensor:
        return self.network.encode_image(images, normalize=True)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        return self.network.encode_text(tokens["input_ids"], normalize=True)

    def logit_scale(self) -> Tensor:
        return self.network.logit_scale.exp().reshape(())

    def save_assets(self, directory: Path) -> dict[str, Any]:
        if not isinstance(self.tokenizer, HFTokenizer):
            return {}
        config = self.network.text.config
        return {"text_model": hf_text.save_text_model(directory, config, self.tokenizer.tokenizer)}


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"{path}: not found; an open_clip model folder needs {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: cannot read: {error}") from error
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise CheckpointError(f"{path}: no 'model_cfg' entry; not an open_clip config")
    return config


def _find_weights(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(f"{folder}: no open_clip weights file (looked for {', '.join(WEIGHT_FILES)}); "
                          "set options.weights to its name")


def _tokenizer(text_cfg: Mapping[str, Any]):
    """open_clip's tokenizer for the text tower: HFTokenizer for Hugging Face towers, else CLIP BPE."""
    context_length = int(text_cfg.get("context_length", 77))
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if "hf_tokenizer_name" in text_cfg:
        return HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length,
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
    return SimpleTokenizer(context_length=context_length, **kwargs)


def _preprocess(config: Mapping[str, Any], vision_cfg: Mapping[str, Any]) -> PathologyPreprocess:
    """open_clip's eval transform as a PathologyPreprocess; warns about settings it cannot reproduce."""
    settings = config.get("preprocess_cfg", {})
    for key, supported in _SUPPORTED_PREPROCESS.items():
        if key in settings and settings[key] not in supported:
            warnings.warn(f"open_clip preprocess_cfg {key}={settings[key]!r} is not reproduced; m3bind uses "
                          f"{supported[0]}", stacklevel=3)
    size = settings.get("size", vision_cfg.get("image_size", 224))
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"open_clip image size {size} is not square; only square inputs are supported")
        size = size[0]
    return PathologyPreprocess(size=int(size), mean=tuple(settings.get("mean", OPENAI_CLIP_MEAN)),
                               std=tuple(settings.get("std", OPENAI_CLIP_STD)))


def _open_clip_compatible(network: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """open_clip's ``load_checkpoint`` conversions that do not change any weight value."""
    if "positional_embedding" in state and not hasattr(network, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)  # old layout of a custom text tower
    if "logit_scale" in state and state["logit_scale"].ndim != network.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(network.logit_scale.shape)
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in network.state_dict():
        del state[position_ids]  # transformers >= 4.31 no longer stores it
    return state
