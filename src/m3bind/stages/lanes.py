"""Independent per-modality jobs run side by side, one process ("lane") each, on a CPU.

Pretraining the built-in models is one small job per modality. On a CPU a small model uses
extra threads poorly: two threads train the demo's X-ray model only 1.3x faster than one, so
two one-thread processes finish two modalities in 52 s where one two-thread process takes 88 s
(``benchmarks/pretrain_lanes.py``). A lane is a spawned process (a forked one could inherit
OpenMP's thread pool in a broken state); its progress and log lines come back through a queue
to the parent's display.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

import torch

# Below this many steps per job, starting a process (importing torch and m3bind again, about
# 6 s) costs more than the lanes save; such runs (tests, `m3bind demo --quick`) stay in-process.
MIN_STEPS_FOR_LANES = 100


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def lane_count(setting: int | str, jobs: int, device: torch.device, steps: int) -> int:
    """How many processes run ``jobs`` jobs of ``steps`` steps each. ``setting`` is a number, or
    ``auto``: one lane per core (at most one per job) on a CPU, when the run is a lone process
    and the jobs are long enough; else 1. A GPU runs its jobs one after another."""
    if setting != "auto":
        return max(1, min(int(setting), jobs))
    if device.type != "cpu" or int(os.environ.get("WORLD_SIZE", 1)) > 1 or steps < MIN_STEPS_FOR_LANES:
        return 1
    return max(1, min(jobs, usable_cores()))


def lane_threads(lanes: int) -> int:
    """Intra-op threads per lane: the cores shared out evenly."""
    return max(1, usable_cores() // max(1, lanes))


class _ForwardedProgress:
    """rich.progress.Progress's add_task/update, sent to the parent through a queue."""

    def __init__(self, messages, lane: str):
        self.messages = messages
        self.lane = lane
        self.count = 0

    def add_task(self, description: str, **fields) -> str:
        self.count += 1
        task = f"{self.lane}/{self.count}"
        self.messages.put(("add", task, {"description": description, **fields}))
        return task

    def update(self, task: str, **fields) -> None:
        self.messages.put(("update", task, fields))

    def log(self, text: str) -> None:
        self.messages.put(("log", None, text))


_LANE: dict = {}  # the lane process's queue; set once by the pool's initializer


def _start_lane(messages, threads: int) -> None:
    torch.set_num_threads(threads)
    _LANE["messages"] = messages


def _run_job(job: Callable, item, lane: str):
    forwarded = _ForwardedProgress(_LANE["messages"], lane)
    return job(item, progress=forwarded, log=forwarded.log)


def _relay(messages, progress, log, stop: threading.Event) -> None:
    """Parent side: replay the lanes' progress and log lines until ``stop`` and the queue is empty."""
    tasks: dict[str, object] = {}
    while not (stop.is_set() and messages.empty()):
        try:
            kind, task, payload = messages.get(timeout=0.2)
        except queue.Empty:
            continue
        if kind == "log":
            log(payload)
        elif progress is not None and kind == "add":
            tasks[task] = progress.add_task(**payload)
        elif progress is not None and kind == "update" and task in tasks:
            progress.update(tasks[task], **payload)


def run_in_lanes(job: Callable, items: Sequence, lanes: int, *, progress=None, log=print) -> list:
    """``[job(item, progress=..., log=...) for item in items]``, in ``lanes`` spawned processes
    with :func:`lane_threads` threads each. ``job`` must be a module-level function and ``items``
    picklable. Results come back in the order of ``items``. When a job fails, jobs not yet
    started are dropped and its exception is raised here once the running ones end."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    stop = threading.Event()
    relay = threading.Thread(target=_relay, args=(messages, progress, log, stop), daemon=True)
    relay.start()
    executor = ProcessPoolExecutor(max_workers=lanes, mp_context=context, initializer=_start_lane,
                                   initargs=(messages, lane_threads(lanes)))
    try:
        futures = [executor.submit(_run_job, job, item, f"lane{i}") for i, item in enumerate(items)]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            # Jobs not started are dropped; running ones cannot be stopped cleanly and finish first.
            log(f"stopping: {failed.exception()} (waiting for the jobs already running)")
            raise failed.exception()
        return [future.result() for future in futures]
    finally:
        executor.shutdown(cancel_futures=True)
        stop.set()
        relay.join()
