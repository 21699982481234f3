"""The interactive layer on top of the HTML view: a Stop button.

The view itself stays the HTML display (updated in place, saved with the
notebook); the button is an ipywidget shown under it and removed when the
run ends. Its click only reaches the kernel while the kernel is idle, so it
is offered for background runs (`--bg`), which return the cell at once.

`Snapshot` does for a whole widget view (the tune panel, a sweep) what the
HTML view does for progress: a static copy saved with the notebook.
"""
from __future__ import annotations

import threading
import time

from .events import Event, State
from .html import HtmlSink


class WidgetSink(HtmlSink):
    def __init__(self, progress, interval: float | None = None):
        super().__init__(interval)
        import ipywidgets as widgets
        self.progress = progress
        self._button_handle = None
        self.button = widgets.Button(description="Stop", button_style="danger", icon="stop",
                                     tooltip="end training after the current step; the best checkpoint is kept")
        self.button.on_click(self._stop)

    def _stop(self, _button=None) -> None:
        self.progress.request_stop()
        self.button.disabled = True
        self.button.description = "Stopping…"

    def open(self, state: State) -> None:
        from IPython.display import display
        super().open(state)
        self._button_handle = display(self.button, display_id=True)

    def handle(self, event: Event, state: State) -> None:
        super().handle(event, state)
        if event.kind == "end":
            # The button's output becomes empty HTML: a closed widget left in the notebook would read
            # "Error displaying widget: model not found" once the kernel is gone.
            from IPython.display import HTML
            if self._button_handle is not None:
                self._button_handle.update(HTML(""))
            self.button.close()


# ---- snapshots: what a widget view leaves in the saved notebook ------------------------------------------

LIVE_CLASS = "llm-magics-live"          # on a widget view's root while its kernel serves it
SNAPSHOT_CLASS = "llm-magics-snapshot"
# Beside a live view the snapshot is hidden (the view shows the same); once the view is gone (the kernel shut
# down, the notebook reopened) the snapshot shows, and the widget's "Error displaying widget: model not found"
# output is hidden: JupyterLab's widget renderer marks its own node .jupyter-widgets only then (a live view's
# node holds the widget instead). Scoped to output areas that hold a snapshot: other outputs are left alone.
# (One :has() per compound selector: CSS does not allow :has() inside :has().)
SNAPSHOT_STYLE = (
    f"<style>.jp-OutputArea:has(.{LIVE_CLASS}) .{SNAPSHOT_CLASS}{{display:none}}"
    f".jp-OutputArea:has(.{SNAPSHOT_CLASS}) .jp-OutputArea-child:has(> .jp-OutputArea-output.jupyter-widgets)"
    f"{{display:none}}</style>")


def snapshot_html(inner: str) -> str:
    """A view's state as static HTML, marked as a snapshot (see SNAPSHOT_STYLE)."""
    return (f"<div class='{SNAPSHOT_CLASS}' style='font-family:sans-serif;font-size:13px'>{SNAPSHOT_STYLE}"
            f"<div style='font-size:11px;opacity:.7'>saved view: the live widget needs its kernel</div>"
            f"{inner}</div>")


class Snapshot:
    """A static HTML copy of a widget view, displayed beside it and updated in place (by display id), so the
    saved notebook keeps the view's last state: a reopened notebook, or nbconvert, shows it instead of an error.

    `render()` returns the view's state as HTML. Updates are throttled to one per `interval` seconds, the last
    one always sent (a timer catches a state that came between two updates).
    """

    def __init__(self, render, interval: float = 1.0):
        self.render = render
        self.interval = interval
        self._handles: list = []
        self._last = 0.0
        self._timer = None
        self._lock = threading.Lock()

    def display(self, widget) -> None:
        """Show the widget (marked live) and its snapshot under it."""
        from IPython.display import HTML, display
        widget.add_class(LIVE_CLASS)
        display(widget)
        self._handles.append(display(HTML(self.markup()), display_id=True))

    def markup(self) -> str:
        return snapshot_html(self.render())

    def refresh(self, now: bool = False) -> None:
        """Send the view's state to its snapshots (at once with `now`, else throttled)."""
        if not self._handles:
            return
        with self._lock:
            wait = self.interval - (time.monotonic() - self._last)
            if not now and wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._send)
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._send()

    def _send(self) -> None:
        from IPython.display import HTML
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        try:
            markup = HTML(self.markup())
            for handle in self._handles:
                handle.update(markup)
        except Exception:  # noqa: BLE001 - a snapshot is a copy: it never breaks the view or the run
            pass
