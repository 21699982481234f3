"""The interactive layer on top of the HTML view: a Stop button.

The view itself stays the HTML display (updated in place, saved with the
notebook); the button is an ipywidget shown under it and removed when the
run ends. Its click only reaches the kernel while the kernel is idle, so it
is offered for background runs (`--bg`), which return the cell at once.
"""
from __future__ import annotations

from .events import Event, State
from .html import HtmlSink


class WidgetSink(HtmlSink):
    def __init__(self, progress, interval: float | None = None):
        super().__init__(interval)
        import ipywidgets as widgets
        self.progress = progress
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
        display(self.button)

    def handle(self, event: Event, state: State) -> None:
        super().handle(event, state)
        if event.kind == "end":
            self.button.close()
