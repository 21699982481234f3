"""Quiet loading: transformers' progress bars and load reports off for one block.

Its own module so that `gguf` (which `sources` imports) needs nothing from `loader`
(which imports `sources`): no import circle.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet():
    """Silence transformers' per-file progress bars and load reports: one run, one display."""
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
