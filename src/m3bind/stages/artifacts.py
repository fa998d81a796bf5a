"""What the stages leave on disk and read back: the bound modalities of ``bind`` and the final
model of ``distill``, in the experiment's output folder.

    <output_dir>/bind/model/    bound.json + adapters.safetensors (LoRA + heads, see save_bound)
    <output_dir>/model/         the final M3Bind (LoRA merged; see m3bind.models.bound)
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import PositiveInt

from m3bind.errors import CheckpointError
from m3bind.experiment import Experiment
from m3bind.fileio import atomic_write_text
from m3bind.models.binding import BoundModality
from m3bind.models.descriptions import Description, PlainName, read_description, write_description
from m3bind.models.weights import check_state, read_weights, save_weights


class BoundDescription(Description):
    """``bind/model/bound.json``: which modalities were bound, and how."""

    version_field: ClassVar[str | None] = "format"
    folder_kind: ClassVar[str] = "a bound model written by `m3bind bind`"

    modalities: list[PlainName]
    shared_dim: PositiveInt
    lora: dict[str, Any]
    format: int = 1


def bind_dir(exp: Experiment) -> Path:
    return exp.out_dir / "bind"


def model_dir(exp: Experiment) -> Path:
    return exp.out_dir / "model"


def prepare_bound(exp: Experiment, modalities: Sequence[str]) -> dict[str, BoundModality]:
    """The unbound models wrapped with binding heads and LoRA, as binding starts them."""
    lora = exp.cfg.bind.lora
    bound = {}
    for index, modality in enumerate(modalities):
        module = BoundModality(exp.load_unbound(modality), exp.cfg.shared_dim, seed=exp.cfg.seed + index)
        module.prepare_for_binding(lora.r, lora.alpha, lora.dropout, text=lora.text, image=lora.image)
        bound[modality] = module.to(exp.device)
    exp.sentence_encoder.adopt(bound.values())
    return bound


def save_bound(bound: Mapping[str, BoundModality], directory: Path, exp: Experiment) -> Path:
    """The binding result: trainable tensors (LoRA + heads) as safetensors, settings as JSON."""
    directory.mkdir(parents=True, exist_ok=True)
    save_weights({f"{m}.{name}": p for m, module in bound.items() for name, p in module.named_parameters()
                  if p.requires_grad}, directory / "adapters.safetensors")
    write_description(directory / "bound.json", BoundDescription(
        modalities=list(bound), shared_dim=exp.cfg.shared_dim, lora=exp.cfg.bind.lora.model_dump()))
    return directory


def load_bound(exp: Experiment, directory: Path | None = None) -> dict[str, BoundModality]:
    """Rebuild the bound modalities written by :func:`save_bound`."""
    directory = directory or bind_dir(exp) / "model"
    if not (directory / "bound.json").exists():
        raise CheckpointError(f"no bound model at {directory}; run `m3bind bind` first")
    description = read_description(directory / "bound.json", BoundDescription)
    if description.shared_dim != exp.cfg.shared_dim:
        raise CheckpointError(f"{directory / 'bound.json'}: shared_dim {description.shared_dim} differs from the "
                              f"config's {exp.cfg.shared_dim}")
    bound = prepare_bound(exp, description.modalities)
    tensors = read_weights(directory / "adapters.safetensors")
    expected = {f"{m}.{name}": p for m, module in bound.items() for name, p in module.named_parameters()
                if p.requires_grad}
    check_state(expected, tensors, directory / "adapters.safetensors", target="the bound modalities' LoRA + heads")
    for m, module in bound.items():
        module.load_state_dict({k[len(m) + 1:]: v for k, v in tensors.items() if k.startswith(m + ".")},
                               strict=False)
    return bound


def export_model(bound: Mapping[str, BoundModality], student):
    """Merge LoRA into the modality models and assemble the user-facing M3Bind."""
    from m3bind.models.binding import merge_lora
    from m3bind.models.bound import M3Bind

    for module in bound.values():
        merge_lora(module.model)
    return M3Bind({m: b.model for m, b in bound.items()}, {m: b.head for m, b in bound.items()}, student)


def write_summary(path: Path, summary: dict) -> Path:
    """A stage's summary.json (numbers the CLI prints and later stages or users read)."""
    return atomic_write_text(path, json.dumps(summary, indent=2, default=str))
