"""Memory HELD per distinct report after SESKD's teacher tables, measured directly rather than as a peak.

    python benchmarks/text_cache_memory.py 1000 5000      # report counts, in increasing order

Five built-in MiniLM towers share one frozen backbone (as in a run); their teacher tables are built
on disk for the first N synthetic reports, for each N in turn, in one process. It prints the
resident memory after each (after garbage collection), the growth per extra report, and what the
sentence cache itself holds: its vector storage and the number of reports whose token ids it keeps.
Resident memory includes what the allocator keeps after freeing, so the two figures can differ.
"""
from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import psutil
import torch

from m3bind.models.binding import BoundModality
from m3bind.models.builtin import build_builtin_model, builtin_config
from m3bind.models.sentence import share_sentence_backbones
from m3bind.train.distill import teacher_encoders
from m3bind.train.frozen import FrozenTextEmbeddings

WORDS = "effusion nodule cardiomegaly opacity consolidation atelectasis pneumothorax emphysema fibrosis edema".split()


def report(i: int) -> str:
    """A distinct report of about 30 tokens."""
    return f"Report {i}: " + " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 25)) + "."


def resident_mib() -> float:
    gc.collect()
    return psutil.Process(os.getpid()).memory_info().rss / 2 ** 20


def main(counts: list[int]) -> None:
    towers = {m: BoundModality(build_builtin_model(m, [], builtin_config(m, text_backbone="minilm"), seed=0), 256,
                               seed=0) for m in ["xray", "ct", "retina", "ecg", "pathology"]}
    share_sentence_backbones(towers.values())
    teachers = teacher_encoders(towers)
    measured = []
    with tempfile.TemporaryDirectory() as work:
        for n in counts:
            with torch.no_grad():
                FrozenTextEmbeddings(teachers, [report(i) for i in range(n)], cache=True, batch_size=256,
                                     directory=Path(work) / f"tables-{n}")
            measured.append((n, resident_mib()))
            print(f"{n} reports: resident {measured[-1][1]:.0f} MiB", flush=True)
    (n0, r0), (n1, r1) = measured[0], measured[-1]
    print(f"resident growth per extra report: {(r1 - r0) * 1024 / (n1 - n0):.2f} KiB")
    sentence = next(iter(towers.values())).model.text_encoder.sentence
    storage = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in sentence._cache.values()}
    print(f"sentence cache: {len(sentence._cache)} vectors in {sum(storage.values()) / 2 ** 20:.1f} MiB of storage "
          f"({sum(storage.values()) / max(1, len(sentence._cache)):.0f} bytes each); token ids kept for "
          f"{sum(map(len, sentence._token_ids.values()))} reports")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1000, 5000])
