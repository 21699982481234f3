"""What a sweep and a panel run show: the live view of the current run, the leaderboard, the plot."""
from __future__ import annotations

import html
import sys
from typing import Any

from ..progress.events import Throttle, format_metric, format_seconds
from ..progress.html import render

NUMBERS_SKIPPED = {"point"}


class WidgetHtmlSink(Throttle):
    """Renders a run's live view into an ipywidgets.HTML (from any thread)."""
    interval = 0.5

    def __init__(self, widget, interval: float | None = None):
        super().__init__(interval)
        self.widget = widget

    def handle(self, event, state) -> None:
        if self.due(event):
            self.widget.value = render(state)


def attach(progress, widget) -> WidgetHtmlSink:
    """Show `progress` in `widget` from now on (and its state so far at once)."""
    sink = WidgetHtmlSink(widget)
    with progress._lock:
        progress.sinks.append(sink)
        widget.value = render(progress.state)
    return sink


def _columns(sweep) -> tuple[list[str], list[str]]:
    swept = [a.name for a in sweep.axes]
    metrics = []
    for row in sweep.rows:
        for key, value in row.items():
            if key in swept or key in NUMBERS_SKIPPED or key in metrics or key == "wall_s":
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(key)
    if sweep.metric in metrics:
        metrics.remove(sweep.metric)
        metrics.insert(0, sweep.metric)
    return swept, metrics


SHOWN_METRICS = 6   # the leaderboard's metric columns (the sort box offers every metric)


def leaderboard_html(sweep, sort_by: str | None = None) -> str:
    """The leaderboard as HTML: best row highlighted, failed points marked with their message."""
    swept, metrics = _columns(sweep)
    key = sort_by or sweep.metric
    metrics = ([key] if key in metrics else []) + [m for m in metrics if m != key]
    metrics = metrics[:SHOWN_METRICS]
    board = sweep.leaderboard(sort_by)
    best = sweep.best()
    head = ["#"] + swept + ["status"] + metrics + ["wall", "run"]
    cells = "".join(f"<th style='padding:2px 8px;text-align:left'>{html.escape(h)}</th>" for h in head)
    rows = []
    for _, row in board.iterrows():
        is_best = best is not None and row.get("run_id") == best.get("run_id") and row.get("run_id")
        style = "background:#e3f4e6;font-weight:bold" if is_best else ""
        status = str(row.get("status", ""))
        colour = {"ok": "#2a7", "failed": "#c33", "stopped": "#c80", "running": "#37c",
                  "skipped": "#888"}.get(status, "#555")
        status_cell = f"<span style='color:{colour}'>{html.escape(status)}</span>"
        if row.get("message"):
            status_cell += f" <span style='color:#c33;font-size:11px'>{html.escape(str(row['message']))}</span>"
        values = [str(int(row["point"]))] + [html.escape(str(row.get(name, ""))) for name in swept]
        numbers = [format_metric(row[m]) if m in row and row[m] == row[m] else "" for m in metrics]
        wall = format_seconds(row["wall_s"]) if row.get("wall_s") == row.get("wall_s") \
            and row.get("wall_s") is not None else ""
        tds = values + [status_cell] + numbers + [wall, f"<code>{html.escape(str(row.get('run_id') or ''))}</code>"]
        rows.append(f"<tr class='llm-sweep-row' style='{style}'>"
                    + "".join(f"<td style='padding:2px 8px;white-space:nowrap'>{v}</td>" for v in tds) + "</tr>")
    done = sum(r["status"] not in ("waiting", "running") for r in sweep.rows)
    title = (f"<b>sweep <code>{html.escape(sweep.id)}</code></b> of %{html.escape(sweep.method)} · "
             f"{done}/{len(sweep.rows)} points · {html.escape(sweep.status)}"
             + (f" · ranked by {html.escape(sort_by or sweep.metric)}" if (sort_by or sweep.metric) else ""))
    return (f"<div class='llm-magics-leaderboard' style='font-family:sans-serif;font-size:13px'>{title}"
            f"<div style='overflow-x:auto'><table style='border-collapse:collapse'><tr>{cells}</tr>"
            f"{''.join(rows)}</table></div></div>")


def leaderboard_text(sweep, sort_by: str | None = None) -> str:
    board = sweep.leaderboard(sort_by)
    swept, metrics = _columns(sweep)
    keep = [c for c in ["point"] + swept + ["status"] + metrics + ["run_id", "message"] if c in board.columns]
    return board[keep].to_string(index=False)


class TextSweepView:
    """Without widgets: one line per point as it ends, the leaderboard at the end."""

    def __init__(self, sweep, stream=None):
        self.sweep, self.stream = sweep, stream
        self._said: set[int] = set()
        sweep.on_update.append(self.update)

    def update(self, sweep) -> None:
        out = self.stream or sys.stdout
        for row in sweep.rows:
            if row["status"] in ("waiting", "running") or row["point"] in self._said:
                continue
            self._said.add(row["point"])
            values = " ".join(f"{a.name}={row[a.name]}" for a in sweep.axes if a.name in row)
            score = f" {sweep.metric}={format_metric(row[sweep.metric])}" if sweep.metric in row else ""
            extra = f" ({row['message']})" if row.get("message") else ""
            print(f"[{sweep.id}] {row['point']}/{len(sweep.rows)} {values}: {row['status']}{score}"
                  f"{' run ' + row['run_id'] if row['run_id'] else ''}{extra}", file=out, flush=True)


class SweepView:
    """The widget of a sweep: the current run's live view, one Stop for the whole sweep,
    the leaderboard (sortable by any metric) and, at the end, the `%llm compare` plot of its runs."""

    def __init__(self, sweep):
        import ipywidgets as widgets
        self.sweep = sweep
        self.live = widgets.HTML()
        self.board = widgets.HTML(leaderboard_html(sweep))
        self.sort = widgets.Dropdown(description="sort by", options=[sweep.metric or "(metric)"],
                                     layout=widgets.Layout(width="280px"))
        self.sort.observe(lambda _change: self.update(self.sweep), "value")
        self.stop_button = widgets.Button(description="Stop sweep", button_style="danger", icon="stop",
                                          tooltip="end the current run cleanly and skip the rest")
        self.stop_button.on_click(self._stop)
        self.plot = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.stop_button, self.sort]), self.live, self.board, self.plot])
        self.widget.add_class("llm-magics-sweep")
        sweep.on_run.append(self.show_run)
        sweep.on_update.append(self.update)

    def _stop(self, _button=None) -> None:
        self.sweep.stop()
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"

    def show_run(self, handle) -> None:
        attach(handle.progress, self.live)

    def update(self, sweep) -> None:
        _, metrics = _columns(sweep)
        options = metrics or [sweep.metric or "(metric)"]
        if list(self.sort.options) != options:
            current = self.sort.value
            self.sort.options = options
            self.sort.value = current if current in options else options[0]
        key = self.sort.value if self.sort.value in metrics else None
        self.board.value = leaderboard_html(sweep, key)
        if sweep.finished:
            self.stop_button.disabled = True
            self.stop_button.description = "Sweep stopped" if sweep.stopping else "Sweep done"
            self.plot.value = plot_html(sweep)

    def _repr_mimebundle_(self, **kwargs) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def plot_html(sweep) -> str:
    try:
        comparison = sweep.compare()
    except Exception as exc:  # noqa: BLE001 - the plot is a bonus, never the reason a sweep fails
        return f"<div style='color:#a60'>no plot: {html.escape(str(exc))}</div>"
    return (f"<div style='overflow-x:auto'>{comparison._repr_html_()}</div>") if comparison.png else ""
