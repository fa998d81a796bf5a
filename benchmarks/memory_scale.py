"""Peak memory of `bind` and `distill` as the dataset grows: does a run hold its data, or stream it?

    python benchmarks/memory_scale.py OUT_DIR [--patients 1000] [--factor 30] [--steps 20]
        [--repeats 3] [--modalities xray retina pathology ecg] [--published] [--pretrain-batch B]

It writes one synthetic cohort of N patients. The small run uses its manifests; the large run uses
manifests in which every training row appears ``factor`` times under new patient ids (same files,
so the large run costs decoding, not rendering; validation and test rows are not repeated, see
``replicated_manifest``). Each run pretrains the built-in models for 5 steps
(which fills the on-disk study cache), then runs `m3bind bind` and `m3bind distill` for a fixed
number of steps, each in a fresh process, ``repeats`` times, and reads that process's peak
resident memory (ru_maxrss). The lowest of the repeats is kept: peak RSS varies by tens of MiB
from run to run (allocator and thread timing), and that noise only ever adds.

The figure that matters is the slope: extra peak memory per extra study. Streaming keeps it to
per-study metadata (texts, labels, ids), not pixels or embeddings. `--published` uses the
published models' preprocessing sizes instead of the demo's (slow on a CPU: the CT volume alone
is 240 x 480 x 480).

Pick N large enough that every split already fills a batch (128 studies) and a store shard
(16 MiB): below that, peak memory still grows with the data up to those fixed bounds, and a
two-point slope mistakes the bounded part for a per-study cost.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml


def measure(args: list[str]) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of one command, in a fresh Python process so earlier children do not mask it."""
    code = ("import json, sys, resource, subprocess, time; t = time.perf_counter(); "
            "subprocess.run([sys.executable, '-m', 'm3bind.cli', *sys.argv[1:]], check=True, "
            "stdout=subprocess.DEVNULL); "
            "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
            "time.perf_counter() - t]))")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True).stdout
    peak, seconds = json.loads(out.strip().splitlines()[-1])
    return peak, seconds


def replicated_manifest(manifest: Path, factor: int) -> Path:
    """The manifest with every training row ``factor`` times, copy k under patient id '<id>-k' and
    with ' Copy k.' after its text (beside the original, so its relative study paths still resolve). Validation and test rows
    stay as they are: evaluation embeds them in batches of at most 128 studies, a bound the small
    run's splits (about 50 studies each at 1,000 patients) have not reached yet, so growing them
    too would measure that bound, not a per-study cost."""
    if factor == 1:
        return manifest
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    train = table[table["split"] == "train"]
    copies = [table[table["split"] != "train"]]
    for k in range(factor):
        copy = train.copy()
        copy["patient_id"] = copy["patient_id"] + f"-{k}"
        # Real reports are all different, and the built-in text towers' frozen sentence encoder
        # keeps one vector per distinct text: repeated texts would hide that cost.
        copy["text"] = copy["text"] + f" Copy {k}."
        copies.append(copy)
    out = manifest.with_name(f"manifest-x{factor}.csv")
    pd.concat(copies, ignore_index=True).to_csv(out, index=False)
    return out


def prepare(out: Path, cohort: Path, factor: int, modalities: list[str], steps: int,
            published: bool, pretrain_batch: int | None = None) -> tuple[Path, int]:
    """A config for the cohort's manifests repeated ``factor`` times, pretrained for 5 steps."""
    from m3bind.stages.demo import demo_config

    run = out / f"run-x{factor}"
    cfg = demo_config(cohort, run).model_dump(mode="json")
    cfg["demo_sizes"] = not published
    cfg["modalities"] = {m: spec for m, spec in cfg["modalities"].items() if m in modalities}
    cfg["paired_manifests"] = {m: p for m, p in cfg["paired_manifests"].items() if m in modalities}
    studies = 0
    for spec in cfg["modalities"].values():
        spec["manifest"] = str(replicated_manifest(Path(spec["manifest"]), factor))
        studies += len(pd.read_csv(spec["manifest"], dtype=str, keep_default_na=False))
    cfg["pretrain"].update(steps=5, checkpoint_every=5)
    if pretrain_batch:  # 32 published-size CT volumes and their activations do not fit in 24 GiB
        cfg["pretrain"]["batch_size"] = pretrain_batch
    cfg["bind"].update(steps=steps, checkpoint_every=steps)
    cfg["distill"].update(kd_steps=steps // 2, contrastive_steps=steps - steps // 2, checkpoint_every=steps)
    cfg["eval"]["student_check"]["enabled"] = False
    config = out / f"config-x{factor}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if not (run / "pretrain").exists():
        subprocess.run([sys.executable, "-m", "m3bind.cli", "pretrain", str(config)], check=True,
                       stdout=subprocess.DEVNULL)
    return config, studies


def measure_stages(config: Path, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """{"bind": [(MiB, s), ...], "distill": [...]}: each stage run ``repeats`` times from scratch."""
    run = Path(yaml.safe_load(config.read_text())["output_dir"])
    results: dict[str, list[tuple[float, float]]] = {"bind": [], "distill": []}
    for _ in range(repeats):
        for stage in ("bind", "distill"):
            shutil.rmtree(run / stage, ignore_errors=True)
            results[stage].append(measure([stage, str(config)]))
    return results


def main() -> None:
    from m3bind.cohort import generate_cohort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--factor", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modalities", nargs="+", default=["xray", "ct", "retina", "ecg", "pathology"])
    parser.add_argument("--published", action="store_true")
    parser.add_argument("--pretrain-batch", type=int, default=None,
                        help="batch size of the 5 pretraining steps that fill the cache (default: the demo's 32)")
    args = parser.parse_args()
    cohort = args.out / f"cohort-{args.patients}"
    if not (cohort / "cohort.json").exists():
        generate_cohort(cohort, n_patients=args.patients, seed=0, workers=2)
    rows = []
    for factor in (1, args.factor):
        config, studies = prepare(args.out, cohort, factor, args.modalities, args.steps, args.published,
                                  args.pretrain_batch)
        rows.append((factor, studies, measure_stages(config, args.repeats)))
    print(f"modalities: {' '.join(args.modalities)}; {args.steps} steps; lowest of {args.repeats} runs "
          "(all runs in brackets)")
    print("| training rows | studies | bind peak RSS (MiB) | bind s | distill peak RSS (MiB) | distill s |")
    print("|---|---|---|---|---|---|")
    for factor, studies, results in rows:
        cells = []
        for stage in ("bind", "distill"):
            peaks = [peak for peak, _ in results[stage]]
            seconds = min(s for _, s in results[stage])
            cells += [f"{min(peaks):.0f} ({', '.join(f'{p:.0f}' for p in peaks)})", f"{seconds:.0f}"]
        print(f"| x{factor} | {studies} | " + " | ".join(cells) + " |")
    (_, small_studies, small), (_, large_studies, large) = rows
    extra = large_studies - small_studies
    summary = {}
    for stage in ("bind", "distill"):
        low = (min(p for p, _ in large[stage]) - min(p for p, _ in small[stage])) * 1024 / extra
        # The widest slope the repeats allow: the large run's highest peak against the small run's lowest.
        high = (max(p for p, _ in large[stage]) - min(p for p, _ in small[stage])) * 1024 / extra
        summary[stage] = {"kib_per_study": low, "kib_per_study_worst_pairing": high}
        print(f"{stage}: {low:.1f} KiB of peak RSS per extra study (worst pairing of repeats {high:.1f}; "
              "target <= 8 KiB)")
    (args.out / "memory_scale.json").write_text(json.dumps({"rows": [(f, s, r) for f, s, r in rows],
                                                            "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
