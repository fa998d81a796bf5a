"""Print the README's results tables from a demo's report.json (and timings.json beside it), so the
README carries exactly what the code measured.

Usage: python scripts/readme_tables.py m3bind-demo
"""
import json
import sys
from pathlib import Path


def _ci(values) -> str:
    return "" if values is None else f" ({values[0]:.3f}-{values[1]:.3f})"


def _signed_ci(values) -> str:
    return "" if values is None else f" ({values[0]:+.3f}, {values[1]:+.3f})"


def retrieval(report: dict) -> None:
    best = {d["where"]: d for d in report["differences"] if d["claim"] == "bound - best baseline"}
    print("| pair | random heads (chance) | chaining | control (lambda 0) | bound | bound - best baseline |")
    print("|---|---|---|---|---|---|")
    scores = report["retrieval"]
    for pair, bound in scores["bound"].items():
        d = best.get(pair)
        claim = "" if d is None else (f"{'**' if d['excludes_zero'] else ''}{d['difference']:+.3f}{_signed_ci(d['ci'])}"
                                      f"{'**' if d['excludes_zero'] else ''} vs {d['b'].replace('_', ' ')}")
        cells = [f"{scores[v][pair]['concept_auc']:.3f}" if pair in scores.get(v, {}) else "-"
                 for v in ("random_heads", "chaining", "control")]
        print(f"| {pair} | {' | '.join(cells)} | {bound['concept_auc']:.3f}{_ci(bound.get('concept_auc_ci'))} | {claim} |")
    wins = [p for p, d in best.items() if d["excludes_zero"] and d["difference"] > 0]
    print(f"\nbound beats the best baseline (interval above 0) on {len(wins)} of {len(best)} pairs: {', '.join(wins) or 'none'}")


def zero_shot(report: dict) -> None:
    variants = [v for v in ("unbound", "control", "bound", "m3bind") if v in report["variants"]]
    print("\n| modality | " + " | ".join(variants) + " | final - bound (95% CI) |")
    print("|---|" + "---|" * (len(variants) + 1))
    diffs = {(d["where"], d["metric"]): d for d in report["differences"]
             if d["claim"] == "final - bound" and d["section"].startswith("zero_shot")}
    for m, by_variant in report["zero_shot"].items():
        cells = [f"{by_variant[v]['expert']['accuracy']:.3f}" if v in by_variant else "-" for v in variants]
        d = diffs.get((m, "accuracy"))
        print(f"| {m} | {' | '.join(cells)} | " + ("" if d is None else f"{d['difference']:+.3f}{_signed_ci(d['ci'])}") + " |")


def student_check(report: dict) -> None:
    check = report.get("student_check")
    if not check:
        return
    rows = [(m, kind, r) for m, by_kind in check["modalities"].items() for kind, r in by_kind.items()]
    met = sum(r["within_bar"] for _, _, r in rows)
    print(f"\nstudent check: bar met on {met} of {len(rows)} rows; largest shortfall {check['worst_difference']:+.3f}")
    for m, kind, r in rows:
        print(f"  {m} {kind}: acc {r['teachers']['accuracy']:.3f} -> {r['final']['accuracy']:.3f}, "
              f"AUC {r['teachers']['auc_macro']:.3f} -> {r['final']['auc_macro']:.3f}{' (bar met)' if r['within_bar'] else ''}")


def real_reports(report: dict) -> None:
    real = report.get("real_reports")
    if not real or real.get("skipped"):
        return
    print(f"\nreal reports ({real['reports']}):")
    for v, r in real["variants"].items():
        print(f"  {v}: accuracy {r['accuracy']:.3f}{_ci(r['accuracy_ci'])}, macro AUC {r['auc_macro']:.3f}"
              f"{_ci(r['auc_macro_ci'])}; majority class {r['majority_rate']:.3f}")


def text_space(report: dict) -> None:
    print("\ntext agreement: " + ", ".join(f"{v} {s['agreement']:.3f}" for v, s in report["text_space"].items()))


def timings(folder: Path) -> None:
    path = folder / "timings.json"
    if path.exists():
        t = json.loads(path.read_text())
        print("\n| stage | seconds |\n|---|---|")
        for stage, seconds in t["seconds"].items():
            print(f"| {stage} | {seconds:.0f} |")
        print(f"| **total** | **{t['total']:.0f}** |")
        for part, seconds in t["parts"].get("evaluate", {}).items():
            print(f"  evaluate / {part}: {seconds:.0f} s")


def ablations(folder: Path) -> None:
    """The ablation studies' rows (`m3bind ablate`): concept AUC with 95% intervals per pair, and
    the mean naive zero-shot accuracy on the test splits."""
    for path in sorted((folder / "ablations").glob("*/ablation.json")):
        rows = json.loads(path.read_text())
        pairs = list(dict.fromkeys(pair for row in rows for pair in row["retrieval"]))
        print(f"\nablation {path.parent.name}:")
        print("| setting | " + " | ".join(pairs) + " | mean zero-shot (naive) |")
        print("|---|" + "---|" * (len(pairs) + 1))
        for row in rows:
            setting = ", ".join(k for k, on in row["setting"].items() if on) or "none"
            cells = []
            for pair in pairs:
                entry = row["retrieval"].get(pair)
                cells.append("-" if entry is None or entry["concept_auc"] is None else
                             f"{entry['concept_auc']:.3f}{_ci(entry.get('concept_auc_ci'))}")
            zero_shot = [v for v in row["zero_shot"].values() if v is not None]
            print(f"| {setting} | {' | '.join(cells)} | {sum(zero_shot) / len(zero_shot):.3f} |")


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    report = json.loads((folder / "report" / "report.json").read_text())
    print(f"command: {report['command']}")
    retrieval(report)
    text_space(report)
    zero_shot(report)
    student_check(report)
    real_reports(report)
    timings(folder)
    ablations(folder)
