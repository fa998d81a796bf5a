"""Suite-wide settings."""
from __future__ import annotations

import os


def _threads_per_worker() -> int | None:
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker is a process: it gets its
    share of the cores: N workers each running torch threads on every core would oversubscribe
    them. None when not under xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


_THREADS = _threads_per_worker()
if _THREADS is not None:
    # xdist workers start with the controller's terminal size in COLUMNS and LINES; rich's console
    # (made when m3bind.cli is imported) would fix its width from them, and the CLI tests that pass
    # their own COLUMNS would get 80-column tables.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
    # Set before torch is imported by any test module, and inherited by the CLI subprocesses tests start.
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
