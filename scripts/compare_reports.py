"""Compare the numbers of two report.json files (a refactor must leave them identical).

Usage: python scripts/compare_reports.py BEFORE/report.json AFTER/report.json [--tolerance 0]
Keys that describe the run rather than its results (created, seconds, command) are ignored;
dict order is ignored. Exit code 1 lists every number that differs and every key only one
report has.
"""
import argparse
import json
import math
import sys

IGNORED = {"created", "seconds", "m3bind_version"}


def differences(a, b, path="", tolerance=0.0):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in IGNORED:
                continue
            if key not in a or key not in b:
                yield f"{path}/{key}: only in {'after' if key not in a else 'before'}"
            else:
                yield from differences(a[key], b[key], f"{path}/{key}", tolerance)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]", tolerance)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance):
            yield f"{path}: {a!r} vs {b!r}"
    elif a != b:
        yield f"{path}: {a!r} vs {b!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--tolerance", type=float, default=0.0)
    args = parser.parse_args()
    before, after = (json.load(open(p)) for p in (args.before, args.after))
    found = list(differences(before, after, tolerance=args.tolerance))
    for line in found:
        print(line)
    print(f"{len(found)} differences" if found else "identical numbers")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
