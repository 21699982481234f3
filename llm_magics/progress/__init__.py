"""Progress events and the sinks that render them."""
from __future__ import annotations

from .events import Event, Progress, State
from .html import HtmlSink
from .text import NullSink, TextSink

__all__ = ["Event", "Progress", "State", "HtmlSink", "TextSink", "NullSink", "make_progress", "in_kernel"]
# WidgetSink lives in .widget: importing it imports ipywidgets, which only a kernel needs.


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where HTML display reaches a frontend)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
        return True
    except ImportError:
        return False


def make_progress(run_id: str, title: str, mode: str = "auto", stoppable: bool = False) -> Progress:
    """A Progress with the sink this environment can show: in a kernel the HTML view (plus a
    Stop button for stoppable runs), elsewhere throttled text. The view opens at once."""
    if mode == "auto":
        mode = "html" if in_kernel() else "text"
    if mode in ("html", "widget") and stoppable and in_kernel() and _widgets_available():
        mode = "widget"
    elif mode == "widget":
        mode = "html"
    progress = Progress([], run_id=run_id, title=title)
    if mode == "widget":
        from .widget import WidgetSink
        sink = WidgetSink(progress)
    else:
        sink = {"html": HtmlSink, "text": TextSink, "none": NullSink}[mode]()
    progress.sinks.append(sink)
    if hasattr(sink, "open"):
        sink.open(progress.state)
    return progress
