"""Which device a process computes on."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from m3bind.errors import ConfigError


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto``: this process's GPU when CUDA is present (``LOCAL_RANK`` picks it under
    ``accelerate launch`` / ``torchrun``), else the CPU; otherwise the named device, checked."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{setting}' asked for, but this machine has no CUDA GPU (use 'auto' or 'cpu')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: '{setting}' asked for, but MPS is not available here")
    return device


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a CUDA GPU that supports bf16 (no loss scaler needed), else
    full precision ("no"): CPU bf16 autocast is slower than float32 on most CPUs."""
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"


def training_accelerator(device: torch.device):
    """The ``accelerate.Accelerator`` a training loop runs under (processes, backward, collectives).

    It is never given a ``mixed_precision``: accelerate keeps one state per process and refuses a
    second Accelerator with another precision, and one process often trains in both (the demo and
    the Python API pretrain in float32, then bind in bf16 on a GPU; found on an H200). Loops
    autocast themselves with :func:`autocast`, which bf16 allows: it needs no loss scaler.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=device.type != "cuda")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on ``device`` when ``precision`` is "bf16"; full precision ("no") otherwise."""
    if precision not in ("no", "bf16"):
        raise ConfigError(f"mixed_precision: '{precision}' is not one of 'no', 'bf16'")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def is_main_process() -> bool:
    """Rank 0 of a launched group (accelerate launch, torchrun), or a lone process."""
    return int(os.environ.get("RANK", 0)) == 0


def process_folder(folder: Path) -> Path:
    """Where one process of a launched group writes the files it keeps for itself (a stage's own
    frozen-embedding tables, which every process computes alike): ``folder`` in a lone process,
    else a subfolder per process, so that no process removes or half-reads another's."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return folder / f"process-{int(os.environ.get('RANK', 0))}"
    return folder


def on_main_process(write):
    """Run ``write()`` on the main process only (files are written once), then let every process
    wait for it, so none reads a file before it exists. Returns ``write()``'s result on the main
    process, None elsewhere."""
    result = write() if is_main_process() else None
    if _in_launched_group():
        torch.distributed.barrier()
    return result


def _in_launched_group() -> bool:
    """Whether this process is one of a launched group (accelerate launch, torchrun). It joins
    the group's collectives here when no training loop has yet (``m3bind eval`` alone trains
    nothing), since waiting for the main process needs them."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        # torch's own group from the launcher's environment, which a later Accelerator adopts.
        # (accelerate's PartialState() here would settle this process as a lone one on a CPU, and
        # every Accelerator after it too: both processes then wrote the same checkpoints.)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return True
