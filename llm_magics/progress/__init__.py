"""Progress events and the sinks that render them."""
from __future__ import annotations

from .events import Event, Progress, State
from .html import HtmlSink
from .text import NullSink, TextSink

__all__ = ["Event", "Progress", "State", "HtmlSink", "TextSink", "NullSink", "make_progress", "in_kernel"]


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where HTML display reaches a frontend)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def make_progress(run_id: str, title: str, mode: str = "auto") -> Progress:
    """A Progress with the sink this environment can show: HTML in a kernel, text elsewhere."""
    if mode == "auto":
        mode = "html" if in_kernel() else "text"
    sinks = {"html": [HtmlSink()], "text": [TextSink()], "none": [NullSink()]}.get(mode)
    if sinks is None:  # widget and any future mode fall back to HTML until registered
        sinks = [HtmlSink()]
    return Progress(sinks, run_id=run_id, title=title)
