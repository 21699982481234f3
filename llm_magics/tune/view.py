"""What a sweep and a panel run show: the live view of the current run, the leaderboard, the plot."""
from __future__ import annotations

import html
import math
import sys
from typing import Any

from ..progress.events import Throttle, format_metric, format_seconds
from ..progress.html import render
from ..progress.theme import BEST_ROW, ERROR, WARN, scroll_box, status_colour
from ..progress.widget import Snapshot
from ..runs import seeds
from ..runs.compare import option_column, ranked_on_test_note

NUMBERS_SKIPPED = {"point", "trial"}
COUNTED = (("ok", "done"), ("stopped", "stopped"), ("skipped", "skipped"), ("failed", "failed"),
           ("running", "running"), ("waiting", "waiting"))   # (row status, word in the title)


def status_counts(sweep) -> str:
    """'1 done · 1 stopped · 2 skipped of 4 points': what each point came to, not just how many ended."""
    statuses = [str(row["status"]) for row in sweep.rows]
    parts = [f"{statuses.count(status)} {word}" for status, word in COUNTED if status in statuses]
    parts += [f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses) if s not in dict(COUNTED)]
    return f"{' · '.join(parts)} of {len(statuses)} points"


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
    """The swept options' columns (--lr, --epochs) and the metrics' (the ranking one first)."""
    swept = [option_column(a.name) for a in sweep.axes]
    metrics = []
    for row in sweep.rows:
        for key, value in row.items():
            if key in swept or key in NUMBERS_SKIPPED or key in metrics or key == "wall_s" or _spread(key):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.append(key)
    if sweep.metric in metrics:
        metrics.remove(sweep.metric)
        metrics.insert(0, sweep.metric)
    return swept, metrics


def _spread(key: str) -> bool:
    """A --seeds point's interval keys (val_accuracy_t_low, …, seeds): shown with their metric, not as columns."""
    return key == seeds.SEEDS_KEY or key.endswith(seeds.SUFFIXES)


def metric_cell(row, metric: str) -> str:
    """The metric's value; for a --seeds point its mean ± the half-width of the t interval over seeds."""
    value = row.get(metric)
    if value is None or value != value:
        return ""
    low, high = row.get(f"{metric}_t_low"), row.get(f"{metric}_t_high")
    if low is None or low != low:
        return format_metric(value)
    return f"{format_metric(value)} ± {(high - low) / 2:.3g}"


SHOWN_METRICS = 6   # the leaderboard's metric columns (the sort box offers every metric)


def leaderboard_html(sweep, sort_by: str | None = None) -> str:
    """The leaderboard as HTML: best row highlighted, failed points marked with their message."""
    swept, metrics = _columns(sweep)
    key = sort_by or sweep.metric
    metrics = ([key] if key in metrics else []) + [m for m in metrics if m != key]
    metrics = metrics[:SHOWN_METRICS]
    board = sweep.leaderboard(sort_by)
    best = sweep.best()
    ties = seeds.VS_BEST in board.columns
    head = ["#"] + swept + ["status"] + metrics + ([seeds.VS_BEST] if ties else []) + ["wall", "run"]
    cells = "".join(f"<th style='padding:2px 8px;text-align:left'>{html.escape(h)}</th>" for h in head)
    rows = []
    for _, row in board.iterrows():
        is_best = best is not None and row.get("run_id") == best.get("run_id") and row.get("run_id")
        style = BEST_ROW if is_best else ""
        status = str(row.get("status", ""))
        status_cell = f"<span style='color:{status_colour(status)}'>{html.escape(status)}</span>"
        if row.get("message"):
            status_cell += f" <span style='color:{ERROR};font-size:11px'>{html.escape(str(row['message']))}</span>"
        values = [str(int(row["point"]))] + [html.escape(str(row.get(name, ""))) for name in swept]
        numbers = [metric_cell(row, m) for m in metrics] + ([_tie_cell(row[seeds.VS_BEST])] if ties else [])
        wall = format_seconds(row["wall_s"]) if row.get("wall_s") == row.get("wall_s") \
            and row.get("wall_s") is not None else ""
        tds = values + [status_cell] + numbers + [wall, f"<code>{html.escape(str(row.get('run_id') or ''))}</code>"]
        tied = " llm-sweep-tied" if ties and row[seeds.VS_BEST] == "≈ best" else ""
        rows.append(f"<tr class='llm-sweep-row{' llm-sweep-best' if is_best else ''}{tied}' style='{style}'>"
                    + "".join(f"<td style='padding:2px 8px;white-space:nowrap'>{v}</td>" for v in tds) + "</tr>")
    title = (f"<b>sweep <code>{html.escape(sweep.id)}</code></b> of %{html.escape(sweep.method)} · "
             f"{html.escape(status_counts(sweep))} · {html.escape(sweep.status)}"
             + (f" · ranked by {html.escape(sort_by or sweep.metric)}" if (sort_by or sweep.metric) else ""))
    note = ranked_on_test_note(sort_by or sweep.metric)
    if ties:
        note = ((note + " · ") if note else "") + ("± is the 95 % t interval over seeds; ≈ best: Welch's t-test over "
                                                   "seeds cannot tell the point from the best (p ≥ 0.05)")
    title += importance_html(sweep)
    note_html = f"<div class='llm-magics-note' style='color:{WARN}'>{html.escape(note)}</div>" if note else ""
    table = f"<table style='border-collapse:collapse'><tr>{cells}</tr>{''.join(rows)}</table>"
    return (f"<div class='llm-magics-leaderboard' style='font-family:sans-serif;font-size:13px'>{title}"
            f"{note_html}{scroll_box(table)}</div>")


def _tie_cell(mark: str) -> str:
    return f"<b>{html.escape(mark)}</b>" if mark == "≈ best" else html.escape(str(mark))


def importance_line(sweep) -> str:
    """'parameter importance: --lr 0.83 · --epochs 0.17' once a learning search has ended ('' otherwise)."""
    importance = getattr(sweep, "importance", None)
    if not importance:
        return ""
    return "parameter importance: " + " · ".join(f"{option_column(n)} {v:.2f}" for n, v in importance.items())


def importance_html(sweep) -> str:
    line = importance_line(sweep)
    return f"<div class='llm-magics-importance'>{html.escape(line)}</div>" if line else ""


def leaderboard_text(sweep, sort_by: str | None = None) -> str:
    board = sweep.leaderboard(sort_by)
    swept, metrics = _columns(sweep)
    if seeds.VS_BEST in board.columns:   # --seeds: the ranking metric as mean ± its t interval's half-width
        key = sort_by or sweep.metric
        board = board.assign(**{key: [metric_cell(r, key) for r in board.to_dict("records")]})
    keep = [c for c in ["point"] + swept + ["status"] + metrics + [seeds.VS_BEST, "run_id", "message"]
            if c in board.columns]
    return board[keep].to_string(index=False)


class TextSweepView:
    """Without widgets: one line per point as it ends, the leaderboard at the end."""

    def __init__(self, sweep, stream=None):
        self.sweep, self.stream = sweep, stream
        self._said: set[int] = set()
        self._noted = self._said_importance = False
        sweep.on_update.append(self.update)

    def update(self, sweep) -> None:
        out = self.stream or sys.stdout
        note = ranked_on_test_note(sweep.metric)
        if note and not self._noted:
            self._noted = True
            print(f"[{sweep.id}] {note}", file=out, flush=True)
        for row in sweep.rows:
            if row["status"] in ("waiting", "running") or row["point"] in self._said:
                continue
            self._said.add(row["point"])
            values = " ".join(f"{a.name}={row[option_column(a.name)]}" for a in sweep.axes
                              if option_column(a.name) in row)
            score = f" {sweep.metric}={format_metric(row[sweep.metric])}" if sweep.metric in row else ""
            extra = f" ({row['message']})" if row.get("message") else ""
            total = getattr(sweep, "trials", None) or len(sweep.rows)   # a search's rows grow trial by trial
            print(f"[{sweep.id}] {row['point']}/{total} {values}: {row['status']}{score}"
                  f"{' run ' + row['run_id'] if row['run_id'] else ''}{extra}", file=out, flush=True)
        if sweep.finished and importance_line(sweep) and not self._said_importance:
            self._said_importance = True
            print(f"[{sweep.id}] {importance_line(sweep)}", file=out, flush=True)


class SweepView:
    """The widget of a sweep: the current run's live view, one Stop for the whole sweep,
    the leaderboard (sortable by any metric) and the plot of that metric against the swept options."""

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
        self.snapshot = Snapshot(self.snapshot_html)
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
        self.plot.value = plot_html(sweep, key)   # grows point by point
        self.snapshot.refresh(now=sweep.finished)

    def snapshot_html(self) -> str:
        """What the saved notebook keeps of this view: the run going on (while one is), leaderboard, plot."""
        live = "" if self.sweep.finished else self.live.value
        return live + self.board.value + self.plot.value

    def _ipython_display_(self) -> None:
        self.snapshot.display(self.widget)

    def _repr_mimebundle_(self, **kwargs) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def plot_html(sweep, metric: str | None = None) -> str:
    """The sweep's figures as <img>s: the metric against a swept option; with 3 or more options varied, their
    parallel coordinates; every point's training loss overlaid. A figure that fails is a line saying why."""
    metric = metric or sweep.metric
    rows = [r for r in sweep.rows if _number(r.get(metric)) is not None]
    x_column, varied = x_axis(sweep, rows) if rows else ("", [])
    figures = [(sweep_plot, f"{metric} against {x_column}"),
               (parallel_plot, f"{metric} over {', '.join(varied)} (parallel coordinates)"),
               (lambda s, _m: curves_plot(s), "training loss of every point")]
    return "".join(_figure_html(make, sweep, metric, alt) for make, alt in figures)


def _figure_html(make, sweep, metric: str | None, alt: str) -> str:
    try:
        png = make(sweep, metric)
    except Exception as exc:  # noqa: BLE001 - the plot is a bonus, never the reason a sweep fails
        return f"<div style='color:{WARN}'>no plot: {html.escape(str(exc))}</div>"
    if png is None:
        return ""
    from ..runs.figures import png_html
    return scroll_box(png_html(png, alt=html.escape(alt, quote=True)))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None


def x_axis(sweep, rows: list[dict]) -> tuple[str, list[str]]:
    """The plot's x: the first swept option that varies over `rows` and is numeric (else the first that varies);
    and every swept option that varies."""
    columns = [option_column(a.name) for a in sweep.axes]
    varied = [c for c in columns if len({str(r.get(c)) for r in rows}) > 1] or columns[:1]
    return next((c for c in varied if all(_number(r.get(c)) is not None for r in rows)), varied[0]), varied


def sweep_plot(sweep, metric: str | None = None) -> bytes | None:
    """The metric against a swept option (the first numeric one that varies), one line per value of
    the other swept options; a stopped point (partly trained) is drawn hollow. None until a point has
    the metric."""
    metric = metric or sweep.metric
    rows = [r for r in sweep.rows if metric and _number(r.get(metric)) is not None]
    if not rows:
        return None
    x_column, varied = x_axis(sweep, rows)
    numeric = all(_number(r.get(x_column)) is not None for r in rows)
    others = [c for c in varied if c != x_column]
    typed = [v for a in sweep.axes if option_column(a.name) == x_column for v in a.values]   # the grid's order
    categories = typed + sorted({str(r.get(x_column)) for r in rows} - set(typed))

    def x_of(row):
        return _number(row[x_column]) if numeric else categories.index(str(row.get(x_column)))

    from ..runs.figures import new_figure, to_png
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    lines: dict[str, list[dict]] = {}
    for row in rows:
        lines.setdefault(" ".join(f"{c} {row.get(c)}" for c in others), []).append(row)
    for label, members in lines.items():
        members = sorted(members, key=x_of)
        xs, ys = [x_of(r) for r in members], [_number(r[metric]) for r in members]
        (line,) = ax.plot(xs, ys, "-", marker="o", markersize=6, label=label or None)
        spread = [(x, y, r) for x, y, r in zip(xs, ys, members) if _number(r.get(f"{metric}_t_low")) is not None]
        if spread:   # --seeds: each point's t interval over seeds as a whisker
            ax.errorbar([x for x, _, _ in spread], [y for _, y, _ in spread], fmt="none", capsize=3,
                        ecolor=line.get_color(), yerr=[[y - r[f"{metric}_t_low"] for _, y, r in spread],
                                                       [r[f"{metric}_t_high"] - y for _, y, r in spread]])
        stopped = [(x, y) for x, y, r in zip(xs, ys, members) if r.get("status") != "ok"]
        if stopped:
            ax.scatter(*zip(*stopped), s=60, facecolors="white", edgecolors=line.get_color(), zorder=3)
    if numeric:
        values = [x_of(r) for r in rows]
        if min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
    else:
        shown = sorted({x_of(r) for r in rows})
        names = {x_of(r): str(r.get(x_column)) for r in rows}
        ax.set_xticks(shown, [names[x] for x in shown])
    ax.set_xlabel(x_column)
    ax.set_ylabel(metric)
    ax.margins(x=0.1, y=0.15)
    ax.grid(alpha=0.3)
    title = f"{metric} against {x_column}" + (f", one line per {' '.join(others)}" if others else "")
    if any(r.get("status") != "ok" for r in rows):
        title += " (hollow: stopped early)"
    if any(_number(r.get(f"{metric}_t_low")) is not None for r in rows):
        title += " (whiskers: 95 % CI over seeds)"
    ax.set_title(title, fontsize=9)
    if others:
        ax.legend(fontsize=8)
    return to_png(fig)


def _scaled(values: list, typed: list[str]) -> tuple[list[float], list[tuple[float, str]]]:
    """One parallel axis: each value placed in [0, 1] (numbers by size, on a log scale when they span 10x or more;
    other values in the grid's order) and the ticks to label it with."""
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers):
        log = min(numbers) > 0 and max(numbers) / min(numbers) >= 10
        keys = [math.log10(n) if log else n for n in numbers]
        low, high = min(keys), max(keys)
        place = [(k - low) / (high - low) if high > low else 0.5 for k in keys]
    else:
        names = [str(v) for v in values]
        order = [t for t in typed if t in names] + sorted(set(names) - set(typed))
        place = [order.index(n) / max(len(order) - 1, 1) for n in names]
    ticks = {p: format_metric(v) if isinstance(v, float) else str(v) for p, v in zip(place, values)}
    return place, sorted(ticks.items())


def parallel_plot(sweep, metric: str | None = None) -> bytes | None:
    """With 3 or more swept options varied: one vertical axis per option and one for the metric, one line per
    point coloured by the metric. None otherwise."""
    metric = metric or sweep.metric
    rows = [r for r in sweep.rows if metric and _number(r.get(metric)) is not None]
    if not rows:
        return None
    _, varied = x_axis(sweep, rows)
    if len(varied) < 3:
        return None
    typed = {option_column(a.name): [str(v) for v in a.values] for a in sweep.axes}
    columns = varied + [metric]
    placed = [_scaled([r.get(c) for r in rows], typed.get(c, [])) for c in columns]
    scores = [_number(r[metric]) for r in rows]
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from ..runs.figures import new_figure, to_png
    colour = ScalarMappable(Normalize(min(scores), max(scores)), colormaps["viridis"])
    fig = new_figure(max(6.0, 1.6 * len(columns)), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for i in sorted(range(len(rows)), key=scores.__getitem__):   # the highest drawn last, on top
        score = scores[i]
        ax.plot(range(len(columns)), [place[i] for place, _ in placed], "-o", markersize=3, linewidth=1.5,
                color=colour.to_rgba(score), alpha=0.85)
    for x, (_, ticks) in enumerate(placed):
        ax.axvline(x, color="grey", linewidth=0.8)
        for y, text in ticks[:8]:
            ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.5)
    ax.set_ylim(-0.08, 1.08)
    fig.colorbar(colour, ax=ax, label=metric)
    ax.set_title(f"{metric} over {len(varied)} swept options, one line per point", fontsize=9)
    return to_png(fig)


def curves_plot(sweep) -> bytes | None:
    """Every ended point's training loss against the step, overlaid and labelled by the point's settings (the
    options that vary between them). None until a point has a curve."""
    rows = [r for r in sweep.rows if sweep.curves.get(r["point"]) and r.get("status") in ("ok", "stopped")]
    if not rows:
        return None
    _, varied = x_axis(sweep, rows)
    from ..runs.figures import new_figure, to_png
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for row in rows:
        label = " ".join(f"{c} {row.get(c)}" for c in varied) if len(rows) > 1 else f"point {row['point']}"
        ax.plot(*zip(*sweep.curves[row["point"]]), linewidth=1,
                linestyle="-" if row["status"] == "ok" else "--", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7)
    stopped = " (dashed: stopped early)" if any(r["status"] != "ok" for r in rows) else ""
    ax.set_title(f"training loss of {len(rows)} points{stopped}", fontsize=9)
    return to_png(fig)
