"""What the command line shows while a long run works: progress and quiet libraries.

In a terminal, progress is rich's live bars. Anywhere else (a log file, CI) live bars are
redrawn at the end, after the results; there, progress is plain ordered lines instead.
Libraries' own bars and warnings (transformers' weight loading, wfdb's pandas warnings) are
not m3bind's output and are silenced.
"""
from __future__ import annotations

import time
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def quiet_libraries() -> None:
    """Silence third-party progress bars and warnings that would interleave with ours."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"wfdb(\.|$)")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"wfdb(\.|$)")


class LineProgress:
    """rich.progress.Progress's add_task/update interface, printed as plain lines: one when a task
    starts, one per tenth of its total, one when it finishes."""

    def __init__(self, console: Console, steps: int = 10):
        self.console = console
        self.steps = steps
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **_) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed,
                            "printed": -1, "start": time.perf_counter()}
        self.console.print(f"{description}: started" + (f" at {completed:g}/{total:g}" if total and completed else ""),
                           soft_wrap=True)
        return task

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **_) -> None:
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if description is not None:
            state["description"] = description
        if completed is not None:
            state["completed"] = completed
        if not state["total"]:
            return
        tenth = int(self.steps * state["completed"] / state["total"])
        if tenth > state["printed"] and tenth > 0:
            state["printed"] = tenth
            elapsed = time.perf_counter() - state["start"]
            self.console.print(f"{state['description']}: {state['completed']:g}/{state['total']:g} ({elapsed:.0f} s)",
                               soft_wrap=True)


def progress_display(console: Console):
    """Live bars in a terminal, :class:`LineProgress` elsewhere."""
    if console.is_terminal:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=False)
    return LineProgress(console)
