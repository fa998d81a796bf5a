"""Wall-clock seconds per stage (or per part of a stage), logged as each part ends."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from m3bind.fileio import atomic_write_text


class StageTimer:
    """Wall-clock seconds per named part, logged as each ends; ``m3bind demo`` writes its
    stages' to timings.json (the README's per-stage table comes from that file)."""

    def __init__(self, log=print):
        self.log, self.seconds = log, {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        # A part timed more than once (one per modality, say) adds up.
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + elapsed, 1)
        self.log(f"{stage}: {elapsed:.0f} s")

    def write(self, path: Path, parts: dict | None = None) -> Path:
        data = {"seconds": self.seconds, "total": round(sum(self.seconds.values()), 1), "parts": parts or {}}
        atomic_write_text(path, json.dumps(data, indent=2))
        self.log(f"demo: {data['total']:.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in self.seconds.items())})")
        return path
