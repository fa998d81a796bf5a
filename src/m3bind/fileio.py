"""Small file helpers shared by checkpoints, reports and saved model folders."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half of it.

    The text goes to a temporary file beside ``path`` first (same filesystem), is flushed to
    disk, and is then renamed over ``path``; ``os.replace`` is atomic on POSIX and Windows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        error.filename = error.filename or str(path)  # a failed write() or flush() names no file
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
