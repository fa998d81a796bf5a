"""A modality model prepared for binding: LoRA adapters (peft) + its binding head.

Only the LoRA matrices and the head train; the original weights stay frozen, which is how
binding keeps each model's own image-text alignment (paper section 3.2).
"""
from __future__ import annotations

from collections.abc import Sequence

import peft
import torch
from torch import Tensor, nn

from m3bind.models.base import ModalityModel
from m3bind.models.heads import BindingHead


def add_lora(module: nn.Module, targets: Sequence[str], r: int, alpha: float, dropout: float) -> int:
    """Inject LoRA adapters into ``module`` in place; returns how many layers got one.

    Raises when ``targets`` match nothing, so a wrong target name cannot silently train nothing.
    """
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                             bias="none")
    try:
        peft.inject_adapter_in_model(config, module)
    except ValueError as exc:
        raise ValueError(f"LoRA targets {list(targets)} match no module of {type(module).__name__}: {exc}") from exc
    return sum(1 for m in module.modules() if isinstance(m, peft.tuners.lora.LoraLayer))


def merge_lora(module: nn.Module) -> None:
    """Fold every LoRA update into its base weight and remove the adapter wrappers (for export)."""
    for name, child in list(module.named_modules()):
        if isinstance(child, peft.tuners.lora.LoraLayer):
            child.merge()
    # Replace wrappers by their (now merged) base layers so the state dict has the original keys.
    for name, child in list(module.named_modules()):
        for attr, grandchild in list(child.named_children()):
            if isinstance(grandchild, peft.tuners.lora.LoraLayer):
                setattr(child, attr, grandchild.get_base_layer())


class BoundModality(nn.Module):
    """One modality's model + binding head, answering in the shared space."""

    def __init__(self, model: ModalityModel, shared_dim: int, seed: int = 0):
        super().__init__()
        self.model = model
        self.modality = model.modality
        self.head = BindingHead(model.native_dim, shared_dim, torch.Generator().manual_seed(seed))

    def prepare_for_binding(self, r: int, alpha: float, dropout: float, text: bool = True,
                            image: bool = False) -> dict[str, int]:
        """Freeze the original model, add LoRA where asked; returns LoRA layer counts per tower."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        counts = {"text": 0, "image": 0}
        if text and self.model.text_lora_targets:
            counts["text"] = add_lora(self.model.text_tower, self.model.text_lora_targets, r, alpha, dropout)
        if image and self.model.image_lora_targets:
            counts["image"] = add_lora(self.model.image_tower, self.model.image_lora_targets, r, alpha, dropout)
        return counts

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen parts stay in eval mode: BatchNorm statistics must not drift while binding.
        # LoRA dropout still follows `mode` because the lora modules are switched back below.
        self.model.eval()
        if mode:
            for module in self.model.modules():
                if isinstance(module, peft.tuners.lora.LoraLayer):
                    module.train()
        return self

    def encode_image(self, images: Tensor) -> Tensor:
        return self.head(self.model.encode_image(images.to(self.model.device)))

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        return self.head(self.model.encode_texts(list(texts)))

    def logit_scale(self) -> Tensor:
        return self.model.logit_scale()


def parameter_report(modules: dict[str, nn.Module]) -> dict[str, dict[str, int]]:
    """Trainable vs total parameters per modality (binding trains only LoRA + heads)."""
    report = {}
    for name, module in modules.items():
        total = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        report[name] = {"trainable": trainable, "total": total}
    return report
