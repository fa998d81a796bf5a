"""A Hugging Face ``CLIPModel`` from a local folder (PLIP and similar).

The folder is what ``CLIPModel.save_pretrained`` / the hub repository holds: ``config.json``,
weights (``model.safetensors`` or ``pytorch_model.bin``), tokenizer files and usually
``preprocessor_config.json``. The weights are loaded by transformers itself (safetensors, or
``torch.load(weights_only=True)`` for ``.bin``), and any missing, unexpected or mismatched key
it reports is turned into a :class:`~m3bind.errors.CheckpointError` (QuiltNet's converted HF
weights, for instance, do not fit ``CLIPModel``; load QuiltNet with the ``open_clip`` adapter).

Embeddings are ``get_image_features`` / ``get_text_features`` (pooled output through the
projection), L2-normalised; the logit scale is ``logit_scale.exp()``. Preprocessing follows
``preprocessor_config.json`` (shortest-side bicubic resize, center crop, mean/std), as
:class:`~m3bind.data.preprocess_specs.PathologyPreprocess`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPModel

from m3bind.data.preprocess_specs import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PathologyPreprocess
from m3bind.errors import CheckpointError, ConfigError
from m3bind.models.adapters import hf_text
from m3bind.models.adapters.base_adapter import AdapterModel, AdapterOptions
from m3bind.models.quiet import no_loading_bars

CLIP_LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
PREPROCESSOR_FILE = "preprocessor_config.json"


class HFCLIPOptions(AdapterOptions):
    """``options:`` of ``type: hf_clip``."""

    path_fields: ClassVar[tuple[str, ...]] = ("tokenizer",)

    modality: str = Field("pathology", min_length=1)
    tokenizer: str | None = Field(None, description="Folder with the tokenizer files (default: the model folder).")
    config: dict[str, Any] | None = Field(None, description="The CLIPConfig as a dict; read from the model "
                                          "folder when not given.")


class HFCLIPAdapter(AdapterModel):
    """A transformers ``CLIPModel`` as a :class:`~m3bind.models.base.ModalityModel` (width ``projection_dim``)."""

    model_type = "hf_clip"
    options_class = HFCLIPOptions
    text_lora_targets = CLIP_LORA_TARGETS
    image_lora_targets = CLIP_LORA_TARGETS

    def __init__(self, options: HFCLIPOptions, network: CLIPModel, tokenizer, preprocess: PathologyPreprocess):
        super().__init__(options)
        self.network = network
        self.tokenizer = tokenizer
        self.native_dim = network.config.projection_dim
        self.preprocess = preprocess

    @classmethod
    def build(cls, options: HFCLIPOptions) -> HFCLIPAdapter:
        if options.config is None:
            raise ConfigError("hf_clip options need the model config (a CLIPConfig dict)")
        config = CLIPConfig.from_dict(options.config)
        tokenizer_folder = hf_text.require_folder(options.tokenizer, "tokenizer", cls.model_type,
                                                  "the folder with the CLIP tokenizer files")
        return cls(options, CLIPModel(config), hf_text.load_tokenizer(tokenizer_folder),
                   _preprocess(tokenizer_folder, config))

    @classmethod
    def from_checkpoint(cls, path: Path, options: HFCLIPOptions) -> HFCLIPAdapter:
        if not path.is_dir():
            raise CheckpointError(f"{path}: expected a Hugging Face CLIPModel folder (config.json + weights)")
        network = _load_clip_model(path)
        tokenizer_folder = hf_text.require_folder(options.tokenizer or str(path), "tokenizer", cls.model_type,
                                                  "the folder with the CLIP tokenizer files")
        options = options.model_copy(update={"config": network.config.to_dict(), "tokenizer": str(tokenizer_folder)})
        model = cls(options, network, hf_text.load_tokenizer(tokenizer_folder),
                    _preprocess(path, network.config))
        return model.eval()

    @classmethod
    def checkpoint_preprocess(cls, path: Path, options: HFCLIPOptions) -> PathologyPreprocess:
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path}: no config.json; not a Hugging Face model folder")
        try:
            config = CLIPConfig.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{path / 'config.json'}: cannot read: {error}") from error
        return _preprocess(path, config)

    # --- ModalityModel ------------------------------------------------------------------
    @property
    def image_tower(self) -> nn.Module:
        return self.network.vision_model

    @property
    def text_tower(self) -> nn.Module:
        return self.network.text_model

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        max_length = self.network.config.text_config.max_position_embeddings
        return hf_text.tokenize(self.tokenizer, texts, max_length)

    def encode_image(self, images: Tensor) -> Tensor:
        return F.normalize(self.network.get_image_features(pixel_values=images).pooler_output, dim=-1)

    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        features = self.network.get_text_features(input_ids=tokens["input_ids"],
                                                  attention_mask=tokens["attention_mask"])
        return F.normalize(features.pooler_output, dim=-1)

    def logit_scale(self) -> Tensor:
        return self.network.logit_scale.exp()

    def save_assets(self, directory: Path) -> dict[str, Any]:
        self.tokenizer.save_pretrained(str(directory / hf_text.TOKENIZER_DIR))
        preprocessor = Path(self.options.tokenizer or "") / PREPROCESSOR_FILE
        if preprocessor.exists():
            (directory / hf_text.TOKENIZER_DIR / PREPROCESSOR_FILE).write_text(preprocessor.read_text())
        return {"tokenizer": hf_text.TOKENIZER_DIR, "config": self.network.config.to_dict()}


def _load_clip_model(folder: Path) -> CLIPModel:
    """``CLIPModel.from_pretrained`` offline, with every loading problem raised as CheckpointError."""
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        # Mismatched shapes are collected (not raised) so that the error below can name them.
        with no_loading_bars():
            network, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                      ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{folder}: cannot load CLIPModel: {error}") from error
    problems = [f"{kind.replace('_', ' ')}: {', '.join(map(_describe_key, keys))}"
                for kind, keys in info.items() if keys and kind != "error_msgs"]
    problems += [str(message) for message in info.get("error_msgs", [])]
    if problems:
        raise CheckpointError(f"{folder}: checkpoint does not fit CLIPModel: " + "; ".join(problems))
    return network


def _describe_key(entry: Any) -> str:
    """A key name, or ``name (file shape, model shape)`` for transformers' mismatch tuples."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        name, file_shape, model_shape = entry
        return f"{name} (file {tuple(file_shape)}, model {tuple(model_shape)})"
    return str(entry)


def _preprocess(folder: Path, config: CLIPConfig) -> PathologyPreprocess:
    """The image processor's settings (crop size, mean, std), or CLIP's defaults without one."""
    path = folder / PREPROCESSOR_FILE
    settings: dict[str, Any] = {}
    if path.exists():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: cannot read: {error}") from error
    crop = settings.get("crop_size", config.vision_config.image_size)
    if isinstance(crop, Mapping):
        crop = crop.get("height", crop.get("shortest_edge", config.vision_config.image_size))
    return PathologyPreprocess(size=int(crop), mean=tuple(settings.get("image_mean", OPENAI_CLIP_MEAN)),
                               std=tuple(settings.get("image_std", OPENAI_CLIP_STD)))
