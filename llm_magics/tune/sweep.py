"""Sweeps: a grid or a seeded random search over a method's options, run one after another.

    %llm sweep lora --model minilm --data train_df --test test_df --grid "lr=1e-4,5e-4 r=4,8" --metric val_accuracy

Each point is the base line with the swept options appended (the last value of
an option wins, as in the magic), parsed and run as its own background run
recorded with the sweep's id. A point that fails (a bad combination, out of
memory) is marked and the sweep goes on; Stop ends the current run cleanly and
skips the rest.
"""
from __future__ import annotations

import itertools
import math
import random
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import options as opts
from ..errors import UsageError, did_you_mean
from ..runs import seeds
from ..runs.compare import PREFERRED_METRICS, compare_recorded, option_column
from . import form
from .background import BackgroundJob


# Each point is a whole run, and the leaderboard holds a row per point: a grid past this is refused (counted,
# not built) unless --max-points raises the limit, up to a ceiling that still fits the rows in memory.
MAX_POINTS = 1000
POINTS_CEILING = 100_000


@dataclass
class SweepOptions:
    grid: str = opts.option(positional=False, help="options to sweep: \"name=v1,v2 name2=a,b\" (a|b when values "
                                                   "hold commas; lo~hi draws from a range with --random)",
                            metavar="SPEC")
    metric: str | None = opts.option(None, "the metric the leaderboard ranks by (default: a validation metric, "
                                           "val_accuracy first; a test metric would tune on the test set)")
    random: int | None = opts.option(None, "a seeded random search of N points instead of the whole grid",
                                     check=opts.positive, metavar="N")
    sweep_seed: int = opts.option(0, "the random search's seed", check=opts.non_negative)
    max_points: int = opts.option(MAX_POINTS, "the most points (runs) the sweep may have: a larger grid or --random "
                                              "is refused before anything is built", check=opts.at_most(POINTS_CEILING),
                                  metavar="N")
    search: str = opts.option("grid", "how points are chosen: grid (every point, or --random N of them) or tpe "
                                      "(Optuna's TPE learns from the points run so far; the tune extra)",
                              choices=("grid", "tpe"))
    trials: int | None = opts.option(None, "how many points the search runs", check=opts.positive, metavar="N",
                                     applies=opts.when("search", "tpe"))
    prune: bool = opts.option(False, "stop a point early when its validation metric trails the earlier points' at "
                                     "the same step (Optuna's median pruner, fed by each evaluation)",
                              applies=opts.when("search", "tpe"))
    study: str | None = opts.option(None, "the study's name (kept in the run store's folder); the same name again "
                                          "resumes it (default: the sweep's id)", metavar="NAME",
                                    applies=opts.when("search", "tpe"))
    out: str | None = opts.option(None, "bind the sweep (leaderboard, results, stop) to this variable",
                                  metavar="NAME")

    def validate(self) -> None:
        if self.search == "tpe" and (not self.trials or self.random):
            raise UsageError("%llm sweep --search tpe needs --trials N (how many points), and no --random")
        if self.search != "tpe" and (self.trials or self.prune or self.study):
            raise UsageError("--trials, --prune and --study belong to a learning search: add --search tpe")


SWEEP_FLAGS = {s.flag for s in opts.specs(SweepOptions)}
# --search NAME → the Sweep class that proposes its points (tune/search.py joins it: no import back to it here).
LEARNING_SEARCHES: dict[str, type] = {}
SWEEP_SWITCHES = {f for s in opts.specs(SweepOptions) if s.kind is bool for f in (s.flag, "--no-" + s.flag[2:])}


def split_sweep_line(tokens: list[str]) -> tuple[list[str], list[str]]:
    """Separate the sweep's own options from the method's line."""
    own, rest, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        flag = token.split("=", 1)[0]
        if flag in SWEEP_SWITCHES:   # --prune takes no value
            own.append(token)
        elif flag in SWEEP_FLAGS:
            if "=" in token:
                own.append(token)
            else:
                own += tokens[i:i + 2]
                i += 1
        else:
            rest.append(token)
        i += 1
    return own, rest


@dataclass
class Axis:
    spec: opts.Spec
    values: list[str] = field(default_factory=list)   # the grid's values, as typed
    low: float | None = None                           # lo~hi: a range (random search only)
    high: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def parse_grid(options_cls, text: str, random_points: int | None = None) -> list[Axis]:
    """'lr=1e-4,5e-4 r=4,8' → one Axis per option, each value checked by the option's own check."""
    by_name = {s.name: s for s in opts.specs(options_cls) if not s.positional}
    by_flag = {s.flag: s for s in by_name.values()}
    axes: list[Axis] = []
    for item in opts.split_line(text):
        name, eq, values = item.partition("=")
        if not eq or not values.strip():
            raise UsageError(f"--grid: expected name=v1,v2 for each swept option, got {item!r}")
        spec = by_flag.get(name) or by_name.get(name.lstrip("-").replace("-", "_"))
        if spec is None or spec.name in form.HANDLED:
            raise UsageError(f"--grid: {name!r} is not an option of this method"
                             + did_you_mean(name.lstrip("-").replace("-", "_"),
                                            [n for n in by_name if n not in form.HANDLED]))
        if any(a.name == spec.name for a in axes):
            raise UsageError(f"--grid: {spec.flag} is swept twice")
        if "~" in values and spec.kind in (int, float):
            if not random_points:
                raise UsageError(f"--grid: {spec.flag} {values!r} is a range: give --random N to draw from it, "
                                 "or list the values (a,b,c)")
            low_text, _, high_text = values.partition("~")
            for bound in (low_text, high_text):
                problem = form.check(spec, bound) if bound.strip() else \
                    f"{spec.flag} range {values!r} needs both ends: low~high"
                if problem:
                    raise UsageError(f"--grid: {problem}")
            low, high = float(low_text), float(high_text)
            if not low < high:
                raise UsageError(f"--grid: {spec.flag} range {values!r} needs low < high")
            axes.append(Axis(spec, low=low, high=high))
            continue
        parts = [v.strip() for v in (values.split("|") if "|" in values else values.split(","))]
        parts = [v for v in parts if v]
        for value in parts:
            problem = form.check(spec, value)
            if problem:
                raise UsageError(f"--grid: {problem}")
        axes.append(Axis(spec, list(dict.fromkeys(parts))))
    if not axes:
        raise UsageError("--grid names no option: e.g. --grid \"lr=1e-4,5e-4 r=4,8\"")
    return axes


def count_points(axes: list[Axis], random_points: int | None = None) -> int:
    """How many points the sweep has, without building them."""
    return random_points or math.prod(len(a.values) for a in axes)


def check_size(axes: list[Axis], options: SweepOptions) -> None:
    count = count_points(axes, options.random or options.trials)
    if count > options.max_points:
        what = f"--random {count:,}" if options.random else f"the grid's {count:,} points"
        raise UsageError(f"%llm sweep: {what} is above the limit of {options.max_points:,} runs: sweep fewer values "
                         f"(or --random N), or raise --max-points (at most {POINTS_CEILING:,})")


def points(axes: list[Axis], random_points: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """The whole grid, or N points drawn with `seed` (without repeats while the grid has enough)."""
    if not random_points:
        return [dict(zip([a.name for a in axes], combo)) for combo in itertools.product(*(a.values for a in axes))]
    rng = random.Random(seed)
    finite = all(a.values for a in axes)
    size = count_points(axes) if finite else 0
    if finite and random_points <= size:   # drawn as grid positions: the grid itself is never built
        return [_grid_point(axes, i) for i in rng.sample(range(size), random_points)]
    out = []
    for _ in range(random_points):
        out.append({a.name: (rng.choice(a.values) if a.values else _draw(a, rng)) for a in axes})
    return out


def _grid_point(axes: list[Axis], index: int) -> dict[str, str]:
    """The grid's point at `index`, in itertools.product's order (the last axis changes fastest)."""
    values = []
    for axis in reversed(axes):
        index, i = divmod(index, len(axis.values))
        values.append(axis.values[i])
    return dict(zip([a.name for a in axes], reversed(values)))


def _draw(axis: Axis, rng: random.Random) -> str:
    low, high = axis.low, axis.high
    if axis.spec.kind is int:
        return str(rng.randint(int(low), int(high)))
    if low > 0 and high / low >= 10:   # a range over orders of magnitude (learning rates): log-uniform
        return f"{math.exp(rng.uniform(math.log(low), math.log(high))):.3g}"
    return f"{rng.uniform(low, high):.4g}"


def point_tokens(axes: list[Axis], point: dict[str, str]) -> list[str]:
    out = []
    for axis in axes:
        value = point[axis.name]
        if axis.spec.kind is bool:
            on = str(value).lower() in ("true", "1", "yes")
            out.append(axis.spec.flag if on else "--no-" + axis.spec.flag[2:])
        else:
            out += [axis.spec.flag, value]
    return out


def new_sweep_id() -> str:
    return f"sweep-{secrets.token_hex(4)}"


def lower_is_better(metric: str) -> bool:
    return any(metric.endswith(s) for s in ("loss", "perplexity", "error", "_s")) or metric.startswith("loss")


class Sweep(BackgroundJob):
    """Points of one sweep, run one after another in a background thread.

    `.stop()` ends the current run cleanly and skips the rest; `.wait()`;
    `.leaderboard()` (a DataFrame ordered by the metric); `.results`;
    `.compare()` (the `%llm compare` table and plot of its runs).
    """

    def __init__(self, method: str, word: str | None, base_tokens: list[str], axes: list[Axis],
                 grid_points: list[dict[str, str]], metric: str | None = None, namespace: dict | None = None,
                 cell: str | None = None, sweep_id: str | None = None, progress_mode: str | None = None):
        self.method, self.word, self.base_tokens, self.axes = method, word, list(base_tokens), axes
        self.points = grid_points
        self.metric = metric
        self.namespace = namespace if namespace is not None else {}
        self.cell = cell
        self.id = sweep_id or new_sweep_id()
        self.progress_mode = progress_mode
        self.rows: list[dict[str, Any]] = [
            # Options under their flag (--epochs), so a metric of the same name (epochs) never overwrites one.
            {"point": i + 1, **{option_column(n): v for n, v in point.items()}, "status": "waiting", "run_id": "",
             "message": "", "line": self.line_of(point)} for i, point in enumerate(grid_points)]
        self.results: list[Any] = []
        self.curves: dict[int, list[tuple[int, float]]] = {}   # point -> its training loss, (step, loss)
        super().__init__()
        self.on_run: list[Callable] = []     # called with each point's RunHandle when it starts
        self.started = self.ended = None

    # -- what runs ------------------------------------------------------------------------
    def line_of(self, point: dict[str, str]) -> str:
        tokens = ([self.word] if self.word else []) + self.base_tokens \
            + point_tokens([a for a in self.axes if a.name in point], point)
        head = ("%%" if self.cell is not None else "%") + self.method
        return f"{head} {form.join(tokens)}".rstrip() + ("\n" + self.cell if self.cell is not None else "")

    def start(self) -> "Sweep":
        self.started = time.time()
        self._thread = threading.Thread(target=self._work, name=f"llm-magics-{self.id}", daemon=True)
        self._thread.start()
        return self

    def _work(self) -> None:
        try:
            for row in self.rows:
                if self._stop.is_set():
                    row["status"] = "skipped"
                    continue
                self.run_row(row)
        finally:
            self.current = None
            self.ended = time.time()
            self._notify()

    def run_row(self, row: dict[str, Any], watch: Callable | None = None):
        """Run one point (its row's line) to its end: the Result, or None when it failed (marked, not raised).
        `watch(handle)` is called once the run has started (a search's pruning listens to its evaluations)."""
        from ..runner import execute
        row["status"] = "running"
        self._notify()
        try:
            _, word, options = form.parse(row["line"])
            handle = execute(self.method, word, options, namespace=self.namespace,
                             progress_mode=self.progress_mode, background=True, sweep_id=self.id)
            row["run_id"] = handle.run_id
            self.current = handle
            for callback in ([watch] if watch else []) + self.on_run:
                callback(handle)
            if self._stop.is_set():   # stopped while it was starting
                handle.stop()
            result = handle.result()
        except Exception as error:   # noqa: BLE001 - a failed point is marked, the sweep goes on
            row["status"] = "failed"
            row["message"] = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
            self._notify()
            return None
        finally:
            self.current = None
        self.results.append(result)
        self.curves[row["point"]] = loss_curve(handle.progress)
        row["status"] = getattr(result, "status", "ok")
        for name, value in getattr(result, "metrics", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[name] = value
        row["wall_s"] = getattr(result, "wall_s", None)
        if self.metric is None:
            self.metric = _pick_metric(row)
        self._notify()
        return result

    # -- asked for by the user (and stop / stopping / wait from BackgroundJob) --------------------
    @property
    def done(self) -> bool:
        return self.finished

    @property
    def finished(self) -> bool:
        """Every point has ended (true from the sweep's last update on, before its thread exits)."""
        return self.ended is not None

    @property
    def status(self) -> str:
        if not self.finished:
            return "stopping" if self._stop.is_set() else "running"
        return "stopped" if self._stop.is_set() else "done"

    def leaderboard(self, sort_by: str | None = None):
        """One row per point: its values, status, run id and metrics; best first by the metric. With --seeds,
        a `vs best` column: 'best', '≈ best' (not distinguishable from it: `runs.seeds.not_distinguishable`) or
        'worse'."""
        import pandas as pd
        frame = pd.DataFrame(self.rows)
        key = sort_by or self.metric
        if key and key in frame.columns:
            frame = frame.sort_values(key, ascending=lower_is_better(key), na_position="last", kind="stable")
            frame = mark_ties(frame.reset_index(drop=True), key)
        return frame.reset_index(drop=True)

    def best(self) -> dict | None:
        board = self.leaderboard()
        if self.metric not in board.columns or board[self.metric].isna().all():
            return None
        return board.iloc[0].to_dict()

    def compare(self):
        return compare_recorded(self.metric, sweep=self.id)

    def __repr__(self) -> str:
        from .view import leaderboard_text
        return f"<Sweep {self.id} of %{self.method}: {self.status}>\n" + leaderboard_text(self)

    def _repr_html_(self) -> str:
        from .view import leaderboard_html, plot_html
        return leaderboard_html(self) + plot_html(self)


def mark_ties(board, metric: str):
    """`board` (sorted best first) with a `vs best` column when its points ran --seeds: each point against the
    best by Welch's t-test over their seeds (one rule, in runs/seeds.py); '' where there is nothing to test."""
    if f"{metric}_sd" not in board.columns or board[metric].isna().all():
        return board
    rows = board.to_dict("records")
    best = rows[0]
    marks = []
    for i, row in enumerate(rows):
        clean = {k: v for k, v in row.items() if v == v}
        tied = seeds.not_distinguishable(best, clean, metric) if i else None
        marks.append("best" if i == 0 else "≈ best" if tied else "worse" if tied is False else "")
    return board.assign(**{seeds.VS_BEST: marks})


def loss_curve(progress) -> list[tuple[int, float]]:
    """A run's training loss as its live view drew it: (step, loss), one per step that reported a loss (the
    Result keeps only the evaluations' history and the curve as a picture)."""
    return [(step, metrics["loss"]) for step, metrics in progress.state.history if "loss" in metrics]


def _pick_metric(row: dict) -> str | None:
    for name in PREFERRED_METRICS:
        if name in row:
            return name
    skip = {"point", "wall_s"}
    return next((k for k, v in row.items() if isinstance(v, float) and k not in skip and not k.startswith("--")),
                None)


def from_line(line: str | list[str], namespace: dict | None = None, progress_mode: str | None = None,
              cell: str | None = None) -> tuple[Sweep, SweepOptions]:
    """`%llm sweep METHOD [COMMAND] <method options> --grid ... [--metric M] [--random N]` → a Sweep (not started)."""
    from ..registry import command_word, parse_magic_line, registry
    tokens = opts.split_line(line) if isinstance(line, str) else list(line)
    if not tokens or tokens[0].startswith("-"):
        raise UsageError("%llm sweep: name the method first, e.g. %llm sweep lora --data df --grid \"lr=1e-4,5e-4\"")
    name, tokens = tokens[0], tokens[1:]
    cls = registry().load(name)
    own, rest = split_sweep_line(tokens)
    sweep_options = opts.parse_line(SweepOptions, own, "llm sweep")
    word = command_word(cls, rest)
    if word and not cls.commands[word].records_run:
        raise UsageError(f"%llm sweep: {name} {word} records no run; sweep a command that trains or evaluates")
    # The base line is parsed now, as its magic parses it: a mistake in it is one UsageError before anything runs.
    parse_magic_line(name, rest, cell)
    axes = parse_grid(cls.command(word).options, sweep_options.grid, sweep_options.random or sweep_options.trials)
    check_size(axes, sweep_options)
    if sweep_options.search in LEARNING_SEARCHES:
        return LEARNING_SEARCHES[sweep_options.search](name, word, rest[1:] if word else rest, axes, sweep_options,
                                                       namespace, cell=cell, progress_mode=progress_mode), sweep_options
    grid_points = points(axes, sweep_options.random, sweep_options.sweep_seed)
    sweep = Sweep(name, word, rest[1:] if word else rest, axes, grid_points, sweep_options.metric, namespace,
                  cell=cell, progress_mode=progress_mode)
    return sweep, sweep_options
