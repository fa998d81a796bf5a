"""The one interface every modality model implements: :class:`ModalityModel`.

Binding, distillation, evaluation and search talk to a modality's
CLIP-like model only through this class. The built-in stand-in models
(:mod:`m3bind.models.builtin`) implement it, and so must adapters for published
checkpoints (MGCA, CT-CLIP, FLAIR, QuiltNet/open_clip, ...).

What an implementation has to provide:

* ``modality`` and ``native_dim``: the modality name and the width of its embeddings
  before any binding head (MGCA 128, the others 512 in the published models).
* ``image_tower`` / ``text_tower``: the sub-modules that peft LoRA wraps, together with
  ``image_lora_targets`` / ``text_lora_targets``, the module-name suffixes peft should
  match inside them (``target_modules``). They differ per architecture: HF BERT uses
  ``("query", "value")``, a BLIP-style ViT ``("qkv",)``, HF CLIP ``("q_proj", "v_proj")``.
  An empty tuple means "no LoRA on that side".
* ``tokenize``: the model's OWN tokenizer. Each text encoder must see its own vocabulary;
  feeding one tokenizer's ids to every encoder (as the authors' code does) is wrong.
* ``encode_image`` / ``encode_text``: L2-normalised ``(B, native_dim)`` embeddings.
* ``logit_scale``: the CLIP temperature as a multiplier (already exponentiated).
* ``preprocess``: a pydantic model describing how raw studies are turned into tensors
  for this model; :meth:`ModalityModel.transform` turns it into a callable.

The base class stays an ``nn.Module`` so that ``.to(device)``, ``.eval()``,
``.parameters()`` and state dicts work on any implementation.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from m3bind.errors import ConfigError


class ModalityModel(nn.Module, abc.ABC):
    """A modality-specific CLIP-like model: an image encoder and a text encoder trained together.

    Subclasses set the class or instance attributes below and implement the abstract
    methods. They call ``super().__init__()`` first, like any ``nn.Module``.
    """

    modality: str
    native_dim: int
    # The name the bound model's m3bind.json records to rebuild this model: "builtin" or an
    # adapter name registered in m3bind.models.adapters.
    model_type: str = "custom"
    # True for models m3bind pretrains itself (the built-in ones); published checkpoints arrive pretrained.
    trains_from_scratch: bool = False
    # Module-name suffixes for peft ``LoraConfig(target_modules=...)``; see the module docstring.
    text_lora_targets: tuple[str, ...] = ()
    image_lora_targets: tuple[str, ...] = ()
    # The preprocessing spec (a pydantic model from m3bind.data.transforms); None when unknown.
    preprocess: BaseModel | None = None

    # --- towers that LoRA wraps -------------------------------------------------------
    @property
    @abc.abstractmethod
    def image_tower(self) -> nn.Module:
        """The image-side module that peft LoRA wraps (its names match ``image_lora_targets``)."""

    @property
    @abc.abstractmethod
    def text_tower(self) -> nn.Module:
        """The text-side module that peft LoRA wraps (its names match ``text_lora_targets``)."""

    # --- encoding ---------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Tokenize with this model's own tokenizer.

        Returns at least ``input_ids`` and ``attention_mask``, both ``(B, L)`` long
        tensors on the CPU.
        """

    @abc.abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """Embed a batch of preprocessed studies; returns ``(B, native_dim)``, unit L2 norm."""

    @abc.abstractmethod
    def encode_text(self, tokens: Mapping[str, Tensor]) -> Tensor:
        """Embed tokenized texts (output of :meth:`tokenize`); returns ``(B, native_dim)``, unit L2 norm."""

    @abc.abstractmethod
    def logit_scale(self) -> Tensor:
        """The CLIP logit multiplier (``exp`` already applied, e.g. ``1/0.07``) as a scalar tensor."""

    def forward(self, images: Tensor, tokens: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Both embeddings at once, ``(image_emb, text_emb)``.

        Only so that wrappers that hook ``forward`` (DistributedDataParallel) see one call.
        """
        return self.encode_image(images), self.encode_text(tokens)

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Tokenize ``texts``, move the tokens to the model's device and embed them.

        Gradients flow as the caller's context decides (binding trains through this).
        """
        if len(texts) == 0:  # tokenizers fail on an empty batch; an empty batch has empty embeddings
            return torch.empty(0, self.native_dim, device=self.device)
        tokens = self.tokenize(texts)
        device = self.device
        return self.encode_text({name: value.to(device) for name, value in tokens.items()})

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a model without parameters)."""
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    # --- preprocessing ----------------------------------------------------------------
    def transform(self) -> Callable[[Any], Tensor]:
        """The callable that turns a study into this model's input tensor.

        Built from ``self.preprocess`` by :func:`m3bind.data.transforms.build_transform`.
        """
        if self.preprocess is None:
            raise ConfigError(
                f"the '{self.modality}' model has no preprocessing spec; pass one "
                "(e.g. m3bind.data.transforms.default_preprocess(modality)) when building it")
        # Imported here so the models package does not depend on the data package at import time.
        from m3bind.data.transforms import build_transform

        return build_transform(self.modality, self.preprocess)

    # --- persistence ------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model to ``directory`` so that :meth:`from_pretrained` can rebuild it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement save_pretrained")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ModalityModel:
        """Rebuild a model written by :meth:`save_pretrained`."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_pretrained")



@runtime_checkable
class EncoderView(Protocol):
    """One modality as the evaluations see it: images and texts embedded in one space.

    A bound modality (its model + head, with its own text encoder) is one; so is
    :class:`m3bind.models.view.SharedSpaceView` (a modality's image side with any text
    encoder, e.g. the SESKD student), which :meth:`M3Bind.view` returns.
    """

    def encode_image(self, images: Tensor) -> Tensor: ...

    def encode_texts(self, texts: Sequence[str]) -> Tensor: ...

    def logit_scale(self) -> Tensor: ...

    def eval(self): ...
