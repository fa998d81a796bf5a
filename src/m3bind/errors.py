"""The library's error types.

Everything a user can cause (a bad file, a bad manifest row, a bad config key) raises a
subclass of :class:`M3BindError` whose message names the file, the row/key and the problem,
so the CLI can print one clean line instead of a traceback.
"""
from __future__ import annotations

from pathlib import Path


class M3BindError(Exception):
    """Base class for every error the library raises on purpose."""


class DataError(M3BindError):
    """A study file or manifest row that cannot be used.

    ``path`` is the offending file, ``row`` the manifest row (0-based data row, header
    excluded) and ``column`` the manifest column when known.
    """

    def __init__(self, path: str | Path | None, problem: str, *, row: int | None = None,
                 column: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.row = row
        self.column = column
        where = []
        if self.path is not None:
            where.append(self.path)
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {problem}" if prefix else problem)

    def __reduce__(self):
        # Pickled by value (a pretraining lane sends its error to the parent process).
        return _data_error, (self.path, self.problem, self.row, self.column)


def _data_error(path, problem, row, column) -> DataError:
    return DataError(path, problem, row=row, column=column)


def listed(names, limit: int = 20) -> str:
    """Names for a message: the first ``limit``, and how many more (a file may hold thousands)."""
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


class ConfigError(M3BindError):
    """An experiment config that does not validate (unknown key, wrong type, bad value)."""


class CheckpointError(M3BindError):
    """A checkpoint that is missing, incomplete or does not fit the model it is loaded into."""


class TrainingError(M3BindError):
    """A training run that cannot go on (for example a NaN loss)."""
