"""Plain-text progress for terminals, scripts, tests and nbconvert without HTML.

Throttled: a line at start, at most one every `interval` seconds while running,
one per evaluation, one at the end. Never a line per batch.
"""
from __future__ import annotations

import sys

from .events import Event, State, Throttle, format_metric, format_seconds


class TextSink(Throttle):
    interval = 10.0

    def __init__(self, stream=None, interval: float | None = None):
        super().__init__(interval)
        self.stream = stream

    def handle(self, event: Event, state: State) -> None:
        if event.kind == "step" and state.total and state.done >= state.total:
            return  # the end line says it
        if event.kind == "start":
            self.started_runs = getattr(self, "started_runs", set()) | {state.run_id}
        elif event.kind == "end" and state.status == "error" and not state.messages \
                and state.run_id not in getattr(self, "started_runs", ()):
            return  # refused before any work started (a UsageError): its one line says it all
        if not self.due(event):
            return
        print(self.line(event, state), file=self.stream or sys.stdout, flush=True)

    @staticmethod
    def line(event: Event, state: State) -> str:
        head = f"[{state.run_id}] {state.title}"
        if event.kind == "log":
            return f"{head}: {event.message}"
        parts = []
        if state.total:
            pct = 100 * state.done / state.total
            parts.append(f"{state.done}/{state.total} {state.unit} ({pct:.0f}%)")
        elif state.done:
            parts.append(f"{state.done} {state.unit}")
        parts.append(f"{format_seconds(state.elapsed)} elapsed")
        if event.kind == "step" and state.eta is not None:
            parts.append(f"ETA {format_seconds(state.eta)}")
        if state.rate and state.rate >= 1:
            parts.append(f"{state.rate:,.0f} {state.unit}/s")
        shown = event.metrics if event.kind in ("eval", "end") else state.metrics
        parts += [f"{k}={format_metric(v)}" for k, v in shown.items()]
        label = {"start": "started", "end": state.status, "eval": "eval"}.get(event.kind, "")
        return f"{head} {label} " + " · ".join(parts) if label else f"{head} " + " · ".join(parts)


class NullSink:
    def handle(self, event: Event, state: State) -> None:
        pass
