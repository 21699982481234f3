"""Quiet loading: transformers' progress bars and load reports off for one block.

Its own module so that `gguf` (which `sources` imports) needs nothing from `loader`
(which imports `sources`): no import circle.
"""
from __future__ import annotations

import contextlib
import functools
import logging

DEEPSPEED_CPU_NOTE = "Setting accelerator to CPU"


class _NoCpuAcceleratorNote(logging.Filter):
    """DeepSpeed, imported by accelerate inside `save_pretrained`, warns on every machine without a GPU that it
    chose the CPU, on stdout (into the cell): not news to a CPU user. Its other messages, errors above all, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(DEEPSPEED_CPU_NOTE)


def _drop_deepspeed_cpu_note() -> None:
    # DeepSpeed's logger is getLogger("DeepSpeed"); set up before its import, the filter stays through it.
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _NoCpuAcceleratorNote) for f in logger.filters):
        logger.addFilter(_NoCpuAcceleratorNote())


@contextlib.contextmanager
def quiet():
    """Silence transformers' per-file progress bars and load reports: one run, one display."""
    from transformers.utils import logging as hf_logging
    _drop_deepspeed_cpu_note()
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


@contextlib.contextmanager
def quiet_gguf_reader():
    """transformers' GGUF reader draws its own tqdm bar (not one that `quiet` turns off): off for the block."""
    import transformers.modeling_gguf_pytorch_utils as reader
    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar
