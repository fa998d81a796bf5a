"""Loading Hugging Face models without transformers' per-model progress bars."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_loading_bars() -> Iterator[None]:
    """transformers draws a 'Loading weights' bar for every model it loads, and loading one m3bind
    model loads the frozen MiniLM once per text tower: a library call should not print six bars
    into a user's notebook or log. The user's own setting is restored afterwards."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
