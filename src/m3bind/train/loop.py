"""The one training loop that pretraining, binding and distillation share.

A stage supplies a ``step_fn(step) -> dict[str, Tensor]`` returning ``{"loss": total, ...parts}``
for one optimizer step's worth of data (it draws its own batch from ``m3bind.train.sampling.step_generator``, so a
resumed run sees exactly the batches an uninterrupted run would). The loop owns everything
else: accelerate (devices, processes, mixed precision, gradient accumulation), the warm-up +
cosine schedule, the NaN guard, atomic checkpoints, exact resume, CSV + TensorBoard logs and
the progress bar.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR

from m3bind.errors import TrainingError
from m3bind.train.checkpoint import CheckpointManager
from m3bind.train.distributed import DataParallel


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up to each group's lr, then cosine decay to ``min_ratio`` of it."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return LambdaLR(optimizer, factor)


class MetricLogger:
    """Appends one row per step to ``metrics.csv`` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: Path, tensorboard: bool = True):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "metrics.csv"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(directory / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        exists = self.path.exists()
        if exists:
            with self.path.open() as f:
                header = next(csv.reader(f), [])
            new_keys = [k for k in row if k not in header]
            if new_keys:  # a later step logged a new column (e.g. an eval metric): rewrite with the wider header
                rows = list(csv.DictReader(self.path.open()))
                header = header + new_keys
                with self.path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=header)
                    w.writeheader()
                    w.writerows(rows)
        else:
            header = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            if not exists:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows the killed run logged after its last checkpoint."""
        if not self.path.exists():
            return
        rows = [r for r in csv.DictReader(self.path.open()) if int(r["step"]) <= step]
        header = next(csv.reader(self.path.open()), [])
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class LoopSettings:
    total_steps: int
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 100
    log_every: int = 1
    mixed_precision: str = "no"     # "no" | "bf16": see m3bind.devices.autocast (no loss scaler needed)
    description: str = "training"


@dataclass
class LoopResult:
    steps_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int | None = None


def clip_per_group(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """Clip the gradient norm of each named parameter group on its own (groups without a name
    together).

    Binding gives every modality its own named group (and its own AMB learning rate): one global
    norm would let one modality's large gradients shrink every other modality's update.
    """
    by_name: dict[str | None, list] = {}
    for group in optimizer.param_groups:
        by_name.setdefault(group.get("name"), []).extend(group["params"])
    for parameters in by_name.values():
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def run_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn: Callable[[int], dict],
             settings: LoopSettings, run_dir: Path, *, accelerator=None, resume: bool = False,
             checkpoint_state: Callable[[], dict[str, torch.Tensor]] | None = None,
             on_checkpoint: Callable[[int], dict] | None = None, progress=None,
             stop_after: int | None = None, tensorboard: bool = True) -> LoopResult:
    """Train ``model`` for ``settings.total_steps`` optimizer steps.

    ``checkpoint_state``: which tensors go into checkpoints (default: the trainable ones). They
    must be the model's live tensors (parameters, buffers, or ``state_dict()`` views of them):
    a resume copies the saved values into exactly these, and refuses a checkpoint that lacks
    any of them or holds others.
    ``on_checkpoint(step)``: extra metrics computed at checkpoint time (e.g. text agreement).
    ``stop_after``: stop (with a checkpoint) after this many steps, simulating a killed run in tests.
    """
    from m3bind.devices import autocast, training_accelerator

    device = next(model.parameters()).device
    accelerator = accelerator or training_accelerator(device)
    parallel = DataParallel(accelerator)
    trained = [p for g in optimizer.param_groups for p in g["params"]]
    checkpoint_state = checkpoint_state or (lambda: trainable_state(model))
    scheduler = warmup_cosine(optimizer, settings.warmup_steps, settings.total_steps)
    checkpoints = CheckpointManager(run_dir / "checkpoints")
    logger = MetricLogger(run_dir, tensorboard=tensorboard and accelerator.is_main_process)
    start = 0
    result = LoopResult(steps_done=0)
    if resume and (latest := checkpoints.latest()) is not None:
        state = checkpoints.load(latest, checkpoint_state(), optimizer, scheduler)
        start = result.resumed_from = state["step"]
        logger.truncate_after(start)
    task = progress.add_task(settings.description, total=settings.total_steps, completed=start) if progress else None

    last_good = start
    try:
        for step in range(start, settings.total_steps):
            model.train()
            parts_sum: dict[str, float] = {}
            for micro in range(settings.grad_accum):
                with autocast(device, settings.mixed_precision):
                    parts = step_fn(step * settings.grad_accum + micro)
                loss = parts["loss"]
                if not torch.isfinite(loss.detach()).all():
                    bad = {k: float(v.detach()) for k, v in parts.items()}
                    raise TrainingError(
                        f"non-finite loss at step {step + 1} ({bad}); stopped. The last good checkpoint "
                        f"is step {last_good} in {checkpoints.directory} (resume with --resume); try a lower "
                        f"learning rate or mixed_precision: no.")
                accelerator.backward(loss / settings.grad_accum)
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value.detach()) / settings.grad_accum
            parallel.average_gradients(trained)
            parts_sum = {key: parallel.mean(value) for key, value in parts_sum.items()}
            if settings.max_grad_norm:
                clip_per_group(optimizer, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            parts_sum["lr"] = optimizer.param_groups[0]["lr"]
            is_checkpoint = done % settings.checkpoint_every == 0 or done == settings.total_steps or done == stop_after
            if is_checkpoint and on_checkpoint is not None:
                parts_sum.update(on_checkpoint(done))
            result.history.append({"step": done, **parts_sum})
            if accelerator.is_main_process and (done % settings.log_every == 0 or is_checkpoint):
                logger.log(done, parts_sum)
            if is_checkpoint and accelerator.is_main_process:
                checkpoints.save(done, checkpoint_state(), optimizer, scheduler)
                last_good = done
            if progress is not None:
                progress.update(task, completed=done, description=f"{settings.description} loss {parts_sum['loss']:.3f}")
            result.steps_done = done
            if stop_after is not None and done >= stop_after:
                break
    finally:
        logger.close()
    return result
