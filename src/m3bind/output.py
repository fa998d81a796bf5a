"""What the command line shows while a long run works: progress and quiet libraries.

In a terminal, progress is rich's live bars. Anywhere else (a log file, CI) live bars are
redrawn at the end, after the results; there, progress is plain ordered lines instead.
Libraries' own bars and warnings (transformers' weight loading, wfdb's pandas warnings) are
not m3bind's output and are silenced.
"""
from __future__ import annotations

import functools
import time
import warnings

import typer
from typer._click.exceptions import ClickException
from typer._click.globals import get_current_context
from rich.console import Console
from rich.markup import escape
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


def debug_requested() -> bool:
    """Whether ``m3bind --debug ...`` asked for full tracebacks (kept on the click context)."""
    context = get_current_context(silent=True)
    root = context.find_root() if context is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def friendly_errors(console: Console):
    """Decorator for CLI commands: every error is one red line and exit code 2, never a traceback
    (``m3bind --debug`` re-raises instead). Library errors (M3BindError) and OS errors (a file
    that cannot be read or written) are the user's to fix; anything else is reported as an
    internal error with the hint to rerun with ``--debug``."""
    from m3bind.errors import M3BindError

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort, ClickException):
                raise
            except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
                if debug_requested():
                    raise
                if isinstance(exc, M3BindError):
                    message = str(exc)
                elif isinstance(exc, OSError):
                    message = _os_error_message(exc)
                elif _is_out_of_memory(exc):
                    message = (f"out of memory ({(str(exc) or type(exc).__name__).splitlines()[0][:200]}); lower the batch size of this "
                               "stage (pretrain.batch_size, bind.image_batch_size / text_batch_size, "
                               "distill.batch_size) or the preprocessing sizes (demo_sizes, or a modality's "
                               "preprocess section), or run on a device with more memory")
                else:
                    message = (f"internal error ({type(exc).__name__}: {exc}); rerun with `m3bind --debug ...` for "
                               "the traceback and report it")
                # soft_wrap keeps the message on one line; escape() keeps "[...]" in it literal.
                console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
                raise typer.Exit(code=2) from None
        return wrapper
    return decorate


def _is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, or torch's on a GPU or a CPU (a RuntimeError there)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _os_error_message(error: OSError) -> str:
    """``file: reason`` (``source -> target: reason`` for a failed rename or copy)."""
    files = [str(f) for f in (error.filename, error.filename2) if f is not None]
    return f"{' -> '.join(files)}: {error.strerror or error}" if files else str(error.strerror or error)
