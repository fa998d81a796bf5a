"""Peak memory of `bind` and `distill` as the dataset grows: does a run hold its data, or stream it?

    python benchmarks/memory_scale.py OUT_DIR [--patients 200] [--factor 10] [--steps 20] [--published]

For cohorts of N and factor x N patients it writes the synthetic cohort, pretrains the built-in
models briefly (which also fills the on-disk study cache), then runs `m3bind bind` and
`m3bind distill` for a fixed number of steps, each in its own process, and reads that
process's peak resident memory (ru_maxrss). The figure that matters is the slope: extra peak
memory per extra study. Streaming keeps it to per-study metadata (texts, labels, ids), not
pixels or embeddings. `--published` uses the published models' preprocessing sizes instead
of the demo's (slow on a CPU: the CT volume alone is 240 x 480 x 480).

Pick N large enough that every split already fills a batch (128 studies) and a store shard
(16 MiB): below that, peak memory still grows with the data up to those fixed bounds, and a
two-point slope mistakes the bounded part for a per-study cost. `--patients 2000 --factor 3`
does; the default 200 does not.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml


def measure(args: list[str]) -> tuple[float, float]:
    """Peak RSS of one command, measured in a fresh Python process so earlier children do not mask it."""
    code = ("import json, sys, resource, subprocess, time; t = time.perf_counter(); "
            "subprocess.run([sys.executable, '-m', 'm3bind.cli', *sys.argv[1:]], check=True, "
            "stdout=subprocess.DEVNULL); "
            "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
            "time.perf_counter() - t]))")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    peak, seconds = json.loads(out.strip().splitlines()[-1])
    return peak, seconds


def prepare(out: Path, patients: int, steps: int, published: bool) -> tuple[Path, int]:
    from m3bind.cohort import generate_cohort
    from m3bind.stages.demo import demo_config

    cohort = out / f"cohort-{patients}"
    if not (cohort / "cohort.json").exists():
        generate_cohort(cohort, n_patients=patients, seed=0, workers=2)
    cfg = demo_config(cohort, out / f"run-{patients}").model_dump(mode="json")
    cfg["demo_sizes"] = not published
    cfg["pretrain"].update(steps=5, checkpoint_every=5)
    cfg["bind"].update(steps=steps, checkpoint_every=steps)
    cfg["distill"].update(kd_steps=steps // 2, contrastive_steps=steps - steps // 2, checkpoint_every=steps)
    config = out / f"config-{patients}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    subprocess.run([sys.executable, "-m", "m3bind.cli", "pretrain", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    studies = sum(len(open(cohort / m / "manifest.csv").readlines()) - 1 for m in cfg["modalities"])
    return config, studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--published", action="store_true")
    args = parser.parse_args()
    rows = []
    for patients in (args.patients, args.patients * args.factor):
        config, studies = prepare(args.out, patients, args.steps, args.published)
        bind_mib, bind_s = measure(["bind", str(config)])
        distill_mib, distill_s = measure(["distill", str(config)])
        rows.append((patients, studies, bind_mib, bind_s, distill_mib, distill_s))
    print("| patients | manifest studies | bind peak RSS (MiB) | bind s | distill peak RSS (MiB) | distill s |")
    print("|---|---|---|---|---|---|")
    for patients, studies, bind_mib, bind_s, distill_mib, distill_s in rows:
        print(f"| {patients} | {studies} | {bind_mib:.0f} | {bind_s:.0f} | {distill_mib:.0f} | {distill_s:.0f} |")
    (small, large) = rows
    extra = large[1] - small[1]
    for name, column in (("bind", 2), ("distill", 4)):
        per_study = (large[column] - small[column]) * 1024 / extra
        print(f"{name}: {per_study:.1f} KiB of peak RSS per extra study (target <= 8 KiB)")


if __name__ == "__main__":
    main()
