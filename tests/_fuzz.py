"""Shared pieces of the fuzz tests: settings, a per-case time and memory limit, case counting.

Every fuzz case must end in :class:`~m3bind.errors.DataError` naming the file, or in a valid
result. A case that raises anything else, runs past :data:`CASE_SECONDS` (a hang) or asks
for more than :data:`CASE_MEMORY_BYTES` of address space beyond what the process already
holds (a huge allocation, which then fails with MemoryError) fails the test.

Runs are derandomized, so CI sees the same cases every time; set ``M3BIND_FUZZ_SCALE`` (a
factor on every case count, e.g. 20) and ``M3BIND_FUZZ_RANDOM=1`` for a longer, fresh search.
Set ``M3BIND_FUZZ_COUNTS=<file.json>`` to write the case counts per reader, input class and
outcome, with the kinds of DataError message seen (docs/reliability.md is made from them).
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
from collections import Counter
from typing import Callable, Iterator

from hypothesis import HealthCheck, settings

from m3bind.errors import DataError

CASE_SECONDS = 10
CASE_MEMORY_BYTES = 3 * 2 ** 30

# (reader, input class, outcome) -> number of cases; outcomes are "valid" and "DataError".
CASES: Counter[tuple[str, str, str]] = Counter()
# (reader, input class) -> how often each DataError problem was seen (its text up to a colon
# or a digit, so that one kind of message counts once).
MESSAGES: dict[tuple[str, str], Counter[str]] = {}


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max(1, round(max_examples * float(os.environ.get("M3BIND_FUZZ_SCALE", "1")))),
        derandomize=os.environ.get("M3BIND_FUZZ_RANDOM") != "1",
        database=None,
        deadline=None,  # a per-case wall-clock deadline is CASE_SECONDS, enforced by a signal
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example],
        print_blob=True,
    )


class CaseTimeout(Exception):
    """A fuzz case ran past CASE_SECONDS."""


@contextlib.contextmanager
def case_limits() -> Iterator[None]:
    """Time limit (SIGALRM) and address-space cap for one case."""
    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran longer than {CASE_SECONDS} s")

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if os.path.exists("/proc/self/statm"):  # Linux; elsewhere only the time limit applies
        cap = _address_space_bytes() + CASE_MEMORY_BYTES
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(CASE_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous_handler)


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def outcome(reader: str, input_class: str, path_text: str, call: Callable[[], object],
            check_valid: Callable[[object], None] | None = None) -> str:
    """Run one case: DataError naming ``path_text``, or a valid result; count the outcome."""
    with case_limits():
        try:
            result = call()
        except DataError as exc:
            assert path_text in str(exc), f"DataError does not name the file: {exc}"
            CASES[(reader, input_class, "DataError")] += 1
            MESSAGES.setdefault((reader, input_class), Counter())[_message_kind(exc)] += 1
            return "DataError"
    if check_valid is not None:
        check_valid(result)
    CASES[(reader, input_class, "valid")] += 1
    return "valid"


def _message_kind(exc: DataError) -> str:
    problem = exc.problem
    cut = min([i for i in (problem.find(":"), next((i for i, c in enumerate(problem)
                                                     if c.isdigit()), -1)) if i > 0],
              default=len(problem))
    return problem[:cut].strip()[:80]


def case_count(reader: str) -> int:
    return sum(n for (name, _, _), n in CASES.items() if name == reader)


def write_counts(path: str) -> None:
    """The case counts and message kinds as JSON (for docs/reliability.md)."""
    rows = [{"reader": r, "input": c, "outcome": o, "cases": n} for (r, c, o), n in sorted(CASES.items())]
    messages = [{"reader": r, "input": c, "messages": dict(m.most_common())}
                for (r, c), m in sorted(MESSAGES.items())]
    with open(path, "w") as f:
        json.dump({"cases": rows, "messages": messages}, f, indent=1)
