"""Data parallelism over accelerate's processes, written so N processes follow the same loss
curve as one.

Every process draws the SAME global batch (batches come from ``step_generator``, which
depends only on seed and step) and works on its own shard of it. The CLIP losses need every
negative of the global batch, so embeddings are all-gathered with gradients (as open_clip
does); the text-alignment MSE is a mean over texts, so each process's shard mean is enough.
After backward, gradients are averaged over processes. With one process every method here
is the identity.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor


class DataParallel:
    def __init__(self, accelerator=None):
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        # Collectives run on the backend's device (NCCL needs CUDA tensors, gloo CPU ones).
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, items: Sequence | Tensor):
        """This process's part of a global batch (every world-th item, from its rank)."""
        return items[self.rank::self.world] if self.active else items

    def gather(self, local: Tensor, total: int | None = None) -> Tensor:
        """Concatenate every process's rows in global-batch order, keeping gradients.

        Shards are interleaved (rank r holds rows r, r+W, ...); the result restores that order so
        row i is global item i. ``total``: the global batch's size, when it is not a multiple of
        the number of processes (a modality with fewer training studies than the batch is sampled
        whole): the shorter shards are padded for the collective, which needs equal sizes, and
        the padding is dropped again.
        """
        if not self.active:
            return local
        import torch.distributed.nn.functional as dist_fn

        per_rank = len(local) if total is None else -(-total // self.world)
        if len(local) < per_rank:
            local = torch.cat([local, local.new_zeros(per_rank - len(local), *local.shape[1:])])
        parts = dist_fn.all_gather(local)
        stacked = torch.stack(list(parts), dim=1)  # (per_rank, world, ...): row j * world + r is item r + j * world
        return stacked.reshape(-1, *local.shape[1:])[:total]

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    def mean(self, value: float) -> float:
        """The average of a logged scalar over processes."""
        if not self.active:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t) / self.world
