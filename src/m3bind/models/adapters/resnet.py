"""The torchvision ResNet-50 trunk that MGCA (``resnet_50``) and FLAIR use as image encoder."""
from __future__ import annotations

from torch import nn
from torchvision.models import resnet50

# LoRA on the 3x3 convolution of every bottleneck block (peft supports Conv2d). The usual
# attention targets do not exist in a CNN; "conv2" does not match the stem's "conv1".
RESNET_LORA_TARGETS: tuple[str, ...] = ("conv2",)

RESNET50_FEATURES = 2048


def resnet50_trunk() -> tuple[nn.Module, int]:
    """An untrained torchvision ResNet-50 with ``fc`` replaced by Identity, and its feature width.

    Both originals replace ``fc`` the same way, so their checkpoints have no ``fc.*`` keys and
    the forward pass ends with the 2048-d average-pooled feature.
    """
    model = resnet50(weights=None)
    model.fc = nn.Identity()
    return model, RESNET50_FEATURES
