"""`%llm compare`: recorded runs side by side, as a table and a plot.

The plot is the argument the field keeps having: quality against the number
of parameters trained, with the time it took.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..progress.theme import WARN, scroll_box
from ..settings import current
from .figures import new_figure, png_html, to_png
from .store import RunStore

TABLE_COLUMNS = ["run_id", "method", "model", "status", "trainable_params", "total_params",
                 "wall_s", "rows_per_s", "tokens_per_s", "peak_mem_bytes", "device", "created"]


@dataclass
class Comparison:
    table: pd.DataFrame
    metric: str
    png: bytes | None = None
    notes: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)   # the option columns (--lr, ...): options that differ

    def _repr_html_(self) -> str:
        if self.table.empty:
            return "<i>No recorded runs yet.</i>"
        table = self.table.to_html(index=False, na_rep="", formatters=formatters(self.table),
                                   classes="llm-magics-compare")
        # One line per run: run ids and numbers never wrap.
        table = table.replace("<td>", "<td style='white-space:nowrap'>").replace(
            "<th>", "<th style='white-space:nowrap'>")
        parts = [f"<b>Runs compared on {html.escape(self.metric)}</b>", scroll_box(table)]
        if self.png:
            parts.append(png_html(self.png, alt=f"{self.metric} against trainable parameters"))
        parts += [f"<div style='color:{WARN}'>{html.escape(n)}</div>" for n in self.notes]
        return "".join(parts)

    def __repr__(self) -> str:
        if self.table.empty:
            return "No recorded runs yet."
        return self.table.to_string(index=False, formatters=formatters(self.table), na_rep="")


INTEGER_COLUMNS = ("trainable_params", "total_params")
ROUNDED_COLUMNS = ("rows_per_s", "tokens_per_s", "peak_mem_mb")
SECONDS_COLUMNS = ("wall_s",)


def formatters(table: pd.DataFrame) -> dict:
    """Large integers with thousands separators; speeds and memory rounded; metrics to 4 digits."""
    def integer(v):
        return "" if v is None or v != v else f"{int(v):,}"

    def rounded(v):
        return "" if v is None or v != v else f"{v:,.0f}"

    def number(v):
        return "" if v is None or v != v else (f"{v:.4g}" if isinstance(v, float) else str(v))

    out = {}
    for column in table.columns:
        if column in INTEGER_COLUMNS:
            out[column] = integer
        elif column in ROUNDED_COLUMNS:
            out[column] = rounded
        elif column in SECONDS_COLUMNS:
            out[column] = lambda v: "" if v is None or v != v else f"{v:,.1f}"
        elif pd.api.types.is_float_dtype(table[column]):
            out[column] = number
    return out


# Methods are compared on held-out test scores; settings (a sweep's points) are chosen on validation,
# since choosing them on test would make the test score optimistic.
COMPARED_METRICS = ("test_accuracy", "val_accuracy", "test_f1", "val_loss", "train_loss")
PREFERRED_METRICS = ("val_accuracy", "val_f1", "val_loss", "test_accuracy", "test_f1", "test_exact_match",
                     "train_loss")


def pick_metric(frame: pd.DataFrame, requested: str | None, preferred: tuple = COMPARED_METRICS) -> str:
    if requested:
        return requested
    for name in preferred:
        if name in frame.columns and frame[name].notna().any():
            return name
    return preferred[0]


def ranked_on_test_note(metric: str | None) -> str | None:
    """One line when a sweep is ranked by a test metric: picking settings on the test set makes the test
    score of the pick optimistic (the test set has become part of the tuning)."""
    if not metric or not metric.startswith("test_"):
        return None
    validation = "val_" + metric[len("test_"):]
    return (f"ranked by {metric}: choosing settings on the test set biases the score you report upward; rank by "
            f"a validation metric ({validation}, with --validation or the split off --data) and read {metric} "
            "once, for the chosen point")


def option_column(name: str) -> str:
    """An option's column is its flag (--epochs): a metric of the same name (epochs) never shares it."""
    return "--" + name.replace("_", "-")


NOT_SHOWN_OPTIONS = {"out", "bg", "model", "method"}   # a variable name, how it ran, or a column already
OPTION_TEXT_WIDTH = 24


def differing_options(options: dict[str, dict], limit: int = 8) -> list[str]:
    """The options (names) whose values differ between runs that have them: what a sweep swept,
    or what sets two runs apart. `options` maps run id to the run's recorded options."""
    seen: dict[str, set[str]] = {}
    for values in options.values():
        for name, value in (values or {}).items():
            if name not in NOT_SHOWN_OPTIONS:
                seen.setdefault(name, set()).add(option_text(value))
    return [name for name, values in seen.items() if len(values) > 1][:limit]


def option_text(value) -> str:
    """A recorded option as a short cell: lists joined, long text (a cell body) cut."""
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    text = "" if value is None else str(value)
    return text if len(text) <= OPTION_TEXT_WIDTH else text[:OPTION_TEXT_WIDTH - 1] + "…"


def with_options(frame: pd.DataFrame, options: dict[str, dict]) -> tuple[pd.DataFrame, list[str]]:
    """`frame` with a column per option that differs between its runs (after run_id), and those columns."""
    names = differing_options({r: options.get(r, {}) for r in frame["run_id"]}) if len(frame) else []
    frame = frame.copy()
    for i, name in enumerate(names):
        frame.insert(1 + i, option_column(name),
                     [option_text((options.get(r) or {}).get(name)) if name in (options.get(r) or {}) else ""
                      for r in frame["run_id"]])
    return frame, [option_column(n) for n in names]


def compare(frame: pd.DataFrame, metric: str | None = None, options: dict[str, dict] | None = None,
            preferred: tuple = COMPARED_METRICS) -> Comparison:
    """The runs of `frame` side by side. `options` (run id → recorded options) adds a column for each
    option that differs between them: a sweep's settings, or a diff of two runs. Without `metric`, the
    first of `preferred` the runs have."""
    metric = pick_metric(frame, metric, preferred)
    if frame.empty:
        return Comparison(frame, metric)
    shown = []
    if options is not None:
        frame, shown = with_options(frame, options)
    columns = [c for c in TABLE_COLUMNS if c in frame.columns]
    columns[1:1] = shown
    if metric in frame.columns:
        columns.insert(3 + len(shown), metric)
        frame = frame.sort_values(metric, ascending=metric.endswith("loss"), na_position="last")
    table = frame[columns].copy()
    for i, (name, values) in enumerate(interval_columns(frame, metric).items()):   # --seeds: the intervals
        table.insert(table.columns.get_loc(metric) + 1 + i if metric in table else len(table.columns), name, values)
    if "peak_mem_bytes" in table:
        table["peak_mem_mb"] = table.pop("peak_mem_bytes") / 2**20
    notes = []
    if metric in frame.columns and frame[metric].notna().any():
        without = frame[metric].isna()
        if without.any():
            kinds = ", ".join(sorted(set(frame.loc[without, "method"])))
            notes.append(f"{int(without.sum())} run(s) without {metric} not shown ({kinds})")
            table, frame = table[~without.to_numpy()], frame[~without]
    if metric not in frame.columns or frame[metric].isna().all():
        notes.append(f"no recorded run has {metric!r}; pass --metric with one of: "
                     + ", ".join(c for c in frame.columns if "_" in c and c not in TABLE_COLUMNS))
        return Comparison(table, metric, None, notes, shown)
    note = ranked_on_test_note(metric) if preferred == PREFERRED_METRICS else None   # choosing settings on test
    if note:
        notes.append(note)
    if options is not None and not shown and len(table) > 1:
        notes.append("the runs' recorded options are the same")
    return Comparison(table, metric, plot(frame, metric), notes, shown)


def plot(frame: pd.DataFrame, metric: str) -> bytes:
    data = frame.dropna(subset=[metric])
    fig = new_figure()
    ax = fig.add_subplot(1, 1, 1)
    params = data["trainable_params"].fillna(0).astype(float)
    # Nothing trained (ICL, a frozen probe's encoder): a labelled position one decade left of the
    # smallest trained count, not 10^0 on a log axis.
    trained = params[params > 0]
    zero_x = 10 ** (np.floor(np.log10(trained.min())) - 1) if len(trained) else 1.0
    has_zero = bool((params <= 0).any())
    params = params.where(params > 0, zero_x)
    wall = data["wall_s"].fillna(0).astype(float)
    sizes = 30 + 270 * (np.sqrt(wall) / max(np.sqrt(wall).max(), 1e-9))
    methods = list(dict.fromkeys(data["method"]))
    palette = ["#37c", "#c33", "#2a7", "#c80", "#84c", "#555", "#0aa"]
    for i, method in enumerate(methods):
        mask = (data["method"] == method).to_numpy()
        ax.scatter(params[mask], data[metric][mask], s=sizes[mask], alpha=0.7,
                   color=palette[i % len(palette)], label=method, edgecolors="white")
    low, high = f"{metric}_t_low", f"{metric}_t_high"
    if low in data.columns:   # a --seeds aggregate: its t interval over seeds as a whisker
        has = data[low].notna().to_numpy()
        ax.errorbar(params[has], data[metric][has], fmt="none", ecolor="#555", capsize=3, linewidth=1,
                    yerr=[data[metric][has] - data[low][has], data[high][has] - data[metric][has]])
    for (_, row), p, w in zip(data.iterrows(), params, wall):
        ax.annotate(f"{w:.0f}s", (p, row[metric]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.15)   # room for the wall-time labels
    ax.set_xlabel("trainable parameters (log)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against trainable parameters (marker area: wall time"
                 + ("; whiskers: 95 % CI over seeds)" if low in data.columns else ")"), fontsize=9)
    ax.grid(alpha=0.3)
    if has_zero:
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
        high = max(float(params.max()), zero_x * 100)
        ticks = [zero_x] + [10.0 ** k for k in range(int(np.log10(zero_x)) + 1, int(np.ceil(np.log10(high))) + 1)]
        ax.set_xlim(zero_x / 3, high * 3)
        ax.axvline(zero_x * 3.2, color="#999", linestyle=":", linewidth=1)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos: "0\n(none trained)" if np.isclose(v, zero_x) else _count(v)))
    legend = ax.legend(fontsize=8)
    for handle in legend.legend_handles:   # one marker size in the legend, whatever the wall times
        handle.set_sizes([40])
    return to_png(fig)


def _count(value: float) -> str:
    """10, 1k, 100k, 10M: a log axis's decades in words a reader counts."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def compare_recorded(metric: str | None = None, method: str | None = None, limit: int | None = None,
                     sweep: str | None = None, runs: list[str] | None = None, diff: bool = False) -> Comparison:
    """The recorded runs side by side (`%llm compare`, `api.compare`, a sweep's `.compare()`): a table and a
    plot of the metric against trainable parameters. `sweep` keeps the runs of one `%llm sweep` (its id) and
    shows its swept options as columns (ranked by a validation metric unless `metric` says otherwise); `runs`
    keeps the named runs; `diff` adds a column for each option that differs between the runs shown."""
    store = RunStore(current().runs_path)
    frame = store.frame(limit=None if sweep or runs else limit, method=method)
    folded = 0
    if sweep:
        if "sweep_id" not in frame.columns or not (frame["sweep_id"] == sweep).any():
            raise UsageError(f"no recorded run belongs to sweep {sweep!r} (%llm runs lists recorded runs)")
        frame = frame[frame["sweep_id"] == sweep]
    if runs:
        missing = [r for r in runs if r not in set(frame["run_id"])]
        if missing:
            raise UsageError(f"no recorded run {missing[0]!r} (%llm runs lists recorded runs)")
        frame = frame[frame["run_id"].isin(runs)]
    if not runs:
        frame, folded = fold_seeds(frame)
    if sweep or runs:
        frame = frame.head(limit) if limit else frame
    options = {r: (store.get(r) or {}).get("options", {}) for r in frame["run_id"]} if sweep or diff else None
    result = compare(frame, metric, options, PREFERRED_METRICS if sweep else COMPARED_METRICS)
    if not runs and folded:
        result.notes.append(f"{folded} per-seed run(s) are shown by their --seeds aggregate (its 'per seed' table; "
                            "--runs ID shows one)")
    return result


def fold_seeds(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The runs without the seeds of a --seeds aggregate that is itself in `frame` (it stands for them)."""
    if "parent_id" not in frame.columns:
        return frame, 0
    folded = frame["parent_id"].isin(set(frame["run_id"])).to_numpy()
    return frame[~folded], int(folded.sum())


def interval_columns(frame: pd.DataFrame, metric: str) -> dict[str, list[str]]:
    """For runs that recorded intervals of `metric` (a --seeds aggregate): one column per kind of interval,
    '± half-width' with the interval itself; empty for other runs."""
    from .seeds import interval_of
    if f"{metric}_t_low" not in frame.columns:
        return {}
    records = frame.to_dict("records")
    pairs = [interval_of({k: v for k, v in r.items() if v == v}, metric) for r in records]
    out = {}
    for i, name in enumerate(("95 % CI (t, seeds)", "95 % CI (bootstrap, rows)")):
        cells = [_interval_cell(p[i]) for p in pairs]
        if any(cells):
            out[name] = cells
    return out


def _interval_cell(interval) -> str:
    if interval is None:
        return ""
    return f"± {(interval.high - interval.low) / 2:.3f} [{interval.low:.3f}, {interval.high:.3f}]"
