"""Pretraining the built-in models one after another (one process, every core) vs side by side
(``pretrain.processes``: one process per core, m3bind.stages.lanes), wall seconds each.

    python benchmarks/pretrain_lanes.py m3bind-demo/config.yaml                # every modality
    python benchmarks/pretrain_lanes.py m3bind-demo/config.yaml -m xray -m retina

Each run writes into its own folder under ``<output_dir>/bench-lanes``; the preprocessed-study
cache is shared (filled before timing), so both runs time training and validation only.
"""
from __future__ import annotations

import argparse
import time

from m3bind.experiment import Experiment
from m3bind.stages import run_pretrain
from m3bind.stages.lanes import lane_threads, usable_cores


def timed_run(base: Experiment, modalities: list[str], processes: int | str, name: str) -> float:
    cfg = base.cfg.model_copy(deep=True)
    cfg.pretrain.processes = processes
    cfg.output_dir = str(base.out_dir / "bench-lanes" / name)
    exp = Experiment(cfg, base.config_path, cache_dir=base.cache_dir)
    start = time.perf_counter()
    run_pretrain(exp, modalities, log=lambda line: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("-m", "--modality", action="append", default=None)
    args = parser.parse_args()
    base = Experiment.from_file(args.config)
    modalities = args.modality or [m for m in base.modalities if base.trains_from_scratch(m)]
    for modality in modalities:  # fill the study cache once, outside the clocks
        base.studies(modality, "train")
        base.studies(modality, "val")
    lanes = min(len(modalities), usable_cores())
    one = timed_run(base, modalities, 1, "one-process")
    side = timed_run(base, modalities, lanes, "lanes")
    print(f"{len(modalities)} modalities ({', '.join(modalities)}), {base.cfg.pretrain.steps} steps each")
    print(f"one process, every core:          {one:7.1f} s")
    print(f"{lanes} processes, {lane_threads(lanes)} thread(s) each:  {side:7.1f} s  ({one / side:.2f}x)")


if __name__ == "__main__":
    main()
