"""Compare the headline numbers of several full demos run with different seeds (each seed is a
new cohort and new initialisations), so that a reader can tell a stable result from a lucky one.

    m3bind demo --seed 1 --out demo-seed1; m3bind demo --seed 2 --out demo-seed2
    python scripts/seed_sweep.py m3bind-demo demo-seed1 demo-seed2

For each retrieval pair: bound concept AUC, and bound minus the best baseline with its 95 %
interval; then text agreement, and the final model's zero-shot accuracy minus the bound model's.
The last column counts the runs whose interval lies above zero / below zero.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path) -> dict:
    return json.loads((folder / "report" / "report.json").read_text())


def main(folders: list[Path]) -> None:
    reports = {folder.name: load(folder) for folder in folders}
    names = list(reports)
    print("| pair | " + " | ".join(f"{n}: bound, bound - best baseline" for n in names) + " | runs above / below |")
    print("|---|" + "---|" * (len(names) + 1))
    first = reports[names[0]]
    wins = {n: 0 for n in names}
    above_control = {n: 0 for n in names}
    for pair in first["retrieval"]["bound"]:
        cells = []
        above = below = 0
        for n in names:
            r = reports[n]
            best = next(d for d in r["differences"] if d["claim"] == "bound - best baseline" and d["where"] == pair)
            bound = r["retrieval"]["bound"][pair]["concept_auc"]
            control = r["retrieval"]["control"][pair]["concept_auc"]
            win = best["excludes_zero"] and best["difference"] > 0
            wins[n] += win
            above += win
            below += best["excludes_zero"] and best["difference"] < 0
            above_control[n] += bound > control
            mark = "**" if best["excludes_zero"] else ""
            cells.append(f"{bound:.3f}, {mark}{best['difference']:+.3f} ({best['ci'][0]:+.3f}, {best['ci'][1]:+.3f}){mark} "
                         f"vs {best['b'].replace('_', ' ')}")
        print(f"| {pair} | " + " | ".join(cells) + f" | {above} / {below} |")
    pairs = len(first["retrieval"]["bound"])
    print("\n" + "; ".join(f"{n}: beats best baseline on {wins[n]} of {pairs}, above control on {above_control[n]}"
                           for n in names))
    print("text agreement (bound / control): " + "; ".join(
        f"{n} {reports[n]['text_space']['bound']['agreement']:.3f} / {reports[n]['text_space']['control']['agreement']:.3f}"
        for n in names))
    print("\n| modality | " + " | ".join(f"{n}: final - bound zero-shot" for n in names) + " | runs above / below |")
    print("|---|" + "---|" * (len(names) + 1))
    for modality in first["zero_shot"]:
        cells = []
        above = below = 0
        for n in names:
            d = next((d for d in reports[n]["differences"] if d["claim"] == "final - bound"
                      and d["section"].startswith("zero_shot") and d["where"] == modality
                      and d["metric"] == "accuracy"), None)
            cells.append("-" if d is None else f"{d['difference']:+.3f} ({d['ci'][0]:+.3f}, {d['ci'][1]:+.3f})")
            if d is not None and d["excludes_zero"]:
                above += d["difference"] > 0
                below += d["difference"] < 0
        print(f"| {modality} | " + " | ".join(cells) + f" | {above} / {below} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
