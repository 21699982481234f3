"""The live view in a notebook: one HTML block per run, updated in place.

It is displayed once with a display id and then updated, so the notebook
keeps only the final state: it survives nbconvert and reopening the file.
Updates are throttled (every `interval` seconds, plus every evaluation and
the end), as transformers' NotebookProgressCallback does.
"""
from __future__ import annotations

import html

from .events import Event, State, Throttle, format_metric, format_seconds
from .theme import BORDER, FAINT, MUTED, WARN, status_colour

CHART_W, CHART_H = 300, 130


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
    colour = status_colour(state.status if state.status in ("ok", "stopped", "error") else "running")
    head = (f'<b>{html.escape(state.title)}</b> <span style="color:{colour}">{state.status}</span>'
            f' <code style="color:{FAINT}">{html.escape(state.run_id)}</code>')
    metrics = "".join(f"<td style='padding:0 8px'><b>{html.escape(k)}</b> {format_metric(v)}</td>"
                      for k, v in state.metrics.items())
    messages = "".join(f"<div style='color:{WARN}'>{html.escape(m)}</div>" for m in list(dict.fromkeys(state.messages))[-3:])
    summary = f"<div style='color:{MUTED}'>{html.escape(state.summary)}</div>" if state.summary else ""
    hint = (f"<div style='color:{FAINT};font-size:11px'>{html.escape(state.hint)}</div>"
            if state.hint and state.status == "running" else "")
    return (f"<div class='llm-magics-progress' style='font-family:sans-serif;font-size:13px'>"
            f"<div>{head}</div>{summary}<div>{bar} {counts} · {timing}</div>"
            f"<table><tr>{metrics}</tr></table>{chart(state.history, state.unit) if state.unit == 'steps' else ''}"
            f"{messages}{hint}</div>")


def _series(history: list[tuple[int, dict[str, float]]]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, values in history:
        for name, value in values.items():
            if value == value:   # NaN draws nothing
                series.setdefault(name, []).append((step, value))
    return {k: v for k, v in series.items() if len(v) > 1}


def _tick(value: float) -> str:
    return f"{value:.3g}"


def _panel(title: str, series: dict[str, list[tuple[int, float]]], max_step: int, unit: str,
           colours: dict[str, str]) -> str:
    """One chart: its series on one y scale, with ticks and labels on both axes.

    A series that repeats another point for point is drawn dashed over it (both show), and a flat
    series sits mid-height, its value on the axis, instead of looking like zero.
    """
    left, right, top, bottom = 46, 8, 16, 30
    inner_w, inner_h = CHART_W - left - right, CHART_H - top - bottom
    values = [v for points in series.values() for _, v in points]
    low, high = min(values), max(values)
    flat = high == low
    if flat:   # one value: a band around it, the line in the middle
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad

    def x(step):
        return left + inner_w * step / max_step

    def y(value):
        return top + inner_h * (1 - (value - low) / (high - low))

    parts = [f"<text x='{left}' y='11' font-size='11' font-weight='bold'>{html.escape(title)}</text>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + inner_h}' style='stroke:{FAINT}'/>",
             f"<line x1='{left}' y1='{top + inner_h}' x2='{left + inner_w}' y2='{top + inner_h}' style='stroke:{FAINT}'/>"]
    ticks = [(low + high) / 2] if flat else [low, (low + high) / 2, high]
    for value in ticks:
        parts.append(f"<line x1='{left - 3}' y1='{y(value):.1f}' x2='{left + inner_w}' y2='{y(value):.1f}' "
                     f"style='stroke:{BORDER}'/><text x='{left - 5}' y='{y(value) + 3:.1f}' font-size='10' "
                     f"text-anchor='end'>{_tick(value)}</text>")
    for step in (0, max_step):
        parts.append(f"<text x='{x(step):.1f}' y='{top + inner_h + 12}' font-size='10' "
                     f"text-anchor='middle'>{step:,}</text>")
    label = unit[:-1] if unit.endswith("s") else unit
    parts.append(f"<text x='{left + inner_w / 2:.1f}' y='{CHART_H - 3}' font-size='10' "
                 f"text-anchor='middle' style='fill:{MUTED}'>{html.escape(label)}</text>")
    drawn: dict[tuple, str] = {}
    for name, points in sorted(series.items()):
        colour = colours[name]
        key = tuple(points)
        dash = " stroke-dasharray='5,4' stroke-width='2.5'" if key in drawn else " stroke-width='1.5'"
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
        parts.append(f"<polyline fill='none' stroke='{colour}'{dash} points='{coords}'/>")
        if len(points) <= 20:   # evaluations: few points, each marked
            parts += [f"<circle cx='{x(s):.1f}' cy='{y(v):.1f}' r='2.5' fill='{colour}'/>" for s, v in points]
        drawn.setdefault(key, name)
    return f"<svg width='{CHART_W}' height='{CHART_H}' style='margin-right:8px;fill:currentColor'>" + "".join(parts) + "</svg>"


def chart(history: list[tuple[int, dict[str, float]]], unit: str = "steps") -> str:
    """Inline SVG charts of every metric seen more than once: losses on one chart, the other
    metrics on another (each with its own y axis), and a legend that names duplicates."""
    series = _series(history)
    if not series:
        return ""
    palette = ["#37c", "#c33", "#2a7", "#c80", "#84c", "#999", "#0aa"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(series))}
    max_step = max(s for points in series.values() for s, _ in points) or 1
    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if k not in losses}
    charts = [_panel(title, group, max_step, unit, colours)
              for title, group in (("loss", losses), ("metrics", others)) if group]
    first_of: dict[tuple, str] = {}
    legend = []
    for name, points in sorted(series.items()):
        values = [v for _, v in points]
        same = first_of.setdefault(tuple(points), name)
        note = f" (= {html.escape(same)}, dashed)" if same != name else ""
        span = (f"{format_metric(values[0])} (flat)" if min(values) == max(values)
                else f"{format_metric(values[0])} → {format_metric(values[-1])}")
        legend.append(f"<span style='white-space:nowrap'><span style='color:{colours[name]}'>■</span> "
                      f"{html.escape(name)} {span}{note}</span>")   # the swatch coloured, the words the theme's
    return ("<div class='llm-magics-chart'>" + "".join(charts) + "</div><div style='font-size:11px'>"
            + " &nbsp; ".join(legend) + "</div>")
