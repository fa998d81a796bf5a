"""LoRA target names for towers whose architecture is only known at load time (open_clip configs).

peft matches ``target_modules`` against the ends of module names. Each attention family
exposes its projections under different names, and only modules called through their own
``forward`` can carry LoRA:

* ``nn.MultiheadAttention`` (open_clip's CLIP towers): its q/k/v projection is a bare
  parameter and ``out_proj`` is read directly by the functional attention, so peft must wrap
  the whole module (peft's ``MultiheadAttention`` LoRA layer); the target is the module name;
* a fused ``qkv`` Linear (timm / BLIP ViTs);
* separate ``query`` / ``value`` Linears (Hugging Face BERT family);
* ``q_proj`` / ``v_proj`` Linears (Hugging Face CLIP, and others).

Adapters with a fixed architecture name their targets as constants instead.
"""
from __future__ import annotations

from torch import nn


def attention_lora_targets(module: nn.Module) -> tuple[str, ...]:
    """The LoRA target-module suffixes for the attention layers inside ``module``; () if none is recognised."""
    linear_names: set[str] = set()
    attention_names: set[str] = set()
    for name, child in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if isinstance(child, nn.MultiheadAttention):
            attention_names.add(last)
        elif isinstance(child, nn.Linear):
            linear_names.add(last)
    if attention_names:
        return tuple(sorted(attention_names))
    for family in (("qkv",), ("query", "value"), ("q_proj", "v_proj")):
        if set(family) <= linear_names:
            return family
    return ()
