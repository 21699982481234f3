"""The live view in a notebook: one HTML block per run, updated in place.

It is displayed once with a display id and then updated, so the notebook
keeps only the final state: it survives nbconvert and reopening the file.
Updates are throttled (every `interval` seconds, plus every evaluation and
the end), as transformers' NotebookProgressCallback does.
"""
from __future__ import annotations

import html

from .events import Event, State, Throttle, format_metric, format_seconds

CHART_W, CHART_H = 320, 90


class HtmlSink(Throttle):
    interval = 0.5

    def __init__(self, interval: float | None = None):
        super().__init__(interval)
        self._handle = None

    def handle(self, event: Event, state: State) -> None:
        if self.due(event):
            self.show(render(state))

    def open(self, state: State) -> None:
        """Display the view now, so it lands in the cell that started the run."""
        self.show(render(state))

    def show(self, markup: str) -> None:
        from IPython.display import HTML, display
        if self._handle is None:
            self._handle = display(HTML(markup), display_id=True)
        else:
            self._handle.update(HTML(markup))


def render(state: State) -> str:
    """The run's current state as self-contained HTML (no JavaScript)."""
    done, total = state.done, state.total
    bar = (f'<progress value="{done}" max="{total}" style="width:320px"></progress>'
           if total else "")
    counts = f"{done:,}/{total:,} {state.unit}" if total else f"{done:,} {state.unit}"
    timing = f"{format_seconds(state.elapsed)} elapsed"
    if state.status == "running" and state.eta is not None:
        timing += f" · ETA {format_seconds(state.eta)}"
    if state.rate and state.rate >= 1:
        timing += f" · {state.rate:,.0f} {state.unit}/s"
    colour = {"ok": "#2a7", "stopped": "#c80", "error": "#c33"}.get(state.status, "#37c")
    head = (f'<b>{html.escape(state.title)}</b> <span style="color:{colour}">{state.status}</span>'
            f' <code style="color:#888">{html.escape(state.run_id)}</code>')
    metrics = "".join(f"<td style='padding:0 8px'><b>{html.escape(k)}</b> {format_metric(v)}</td>"
                      for k, v in state.metrics.items())
    messages = "".join(f"<div style='color:#a60'>{html.escape(m)}</div>" for m in state.messages[-3:])
    summary = f"<div style='color:#555'>{html.escape(state.summary)}</div>" if state.summary else ""
    hint = (f"<div style='color:#888;font-size:11px'>{html.escape(state.hint)}</div>"
            if state.hint and state.status == "running" else "")
    return (f"<div class='llm-magics-progress' style='font-family:sans-serif;font-size:13px'>"
            f"<div>{head}</div>{summary}<div>{bar} {counts} · {timing}</div>"
            f"<table><tr>{metrics}</tr></table>{chart(state.history) if state.unit == 'steps' else ''}"
            f"{messages}{hint}</div>")


def chart(history: list[tuple[int, dict[str, float]]]) -> str:
    """An inline SVG line chart of every metric seen more than once."""
    series: dict[str, list[tuple[int, float]]] = {}
    for step, values in history:
        for name, value in values.items():
            series.setdefault(name, []).append((step, value))
    series = {k: v for k, v in series.items() if len(v) > 1}
    if not series:
        return ""
    palette = ["#37c", "#c33", "#2a7", "#c80", "#84c", "#999"]
    max_step = max(s for points in series.values() for s, _ in points) or 1
    lines, legend = [], []
    for i, (name, points) in enumerate(sorted(series.items())):
        values = [v for _, v in points]
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        coords = " ".join(f"{CHART_W * s / max_step:.1f},{CHART_H - 4 - (CHART_H - 8) * (v - low) / span:.1f}"
                          for s, v in points)
        colour = palette[i % len(palette)]
        lines.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{coords}'/>")
        legend.append(f"<span style='color:{colour}'>■ {html.escape(name)} "
                      f"{format_metric(low)}–{format_metric(high)}</span>")
    return (f"<svg width='{CHART_W}' height='{CHART_H}' style='border:1px solid #ddd'>"
            + "".join(lines) + "</svg><div style='font-size:11px'>" + " ".join(legend) + "</div>")
