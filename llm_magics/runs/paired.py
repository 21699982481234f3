"""`%llm compare A B --paired`: two runs' per-item predictions on their shared test rows, paired.

Each run is a run id (its predictions are the Parquet file its record names) or a Result (its
`predictions` frame, else the same file). The rows pair on `item_id` (`stats.pair_items`), and
`stats.paired_difference` gives the difference with its paired bootstrap interval and, for 0/1
correctness, the exact McNemar test. The answer is a value: one sentence, and the numbers behind it.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..errors import UsageError
from ..settings import current
from . import predictions, stats
from .store import RunStore


SEED_AVERAGED = "seed-averaged correctness"   # what a --seeds aggregate's per-item `correct` is


@dataclass(frozen=True)
class PairedRuns:
    a: str                          # the runs as the user named them (run id or variable)
    b: str
    metric: str                     # the per-item column compared ("correct": accuracy)
    a_mean: float                   # each run's mean of it over the shared rows
    b_mean: float
    paired: stats.PairedComparison

    @property
    def binary(self) -> bool:
        return self.paired.mcnemar_p is not None

    @property
    def in_points(self) -> bool:
        """Correctness, 0/1 or averaged over seeds, reads in points (hundredths)."""
        return self.binary or self.metric == SEED_AVERAGED

    def _amount(self, value: float) -> str:
        return f"{100 * value:.1f}" if self.in_points else f"{value:.3g}"

    @property
    def sentence(self) -> str:
        d, n = self.paired.difference, self.paired.shared
        unit = " points" if self.in_points else ""
        evidence = (f"95 % CI {self._amount(d.low)} to {self._amount(d.high)}"
                    + (f", McNemar p = {self.paired.mcnemar_p:.2g}" if self.binary else "") + f", {n} shared rows")
        if not self.paired.significant:
            return (f"{self.a} and {self.b} cannot be told apart on {self.metric}: the difference is "
                    f"{self._amount(d.mean)}{unit} ({evidence})")
        word = "above" if d.mean > 0 else "below"
        return f"{self.a} is {self._amount(abs(d.mean))}{unit} {word} {self.b} on {self.metric} ({evidence})"

    def table(self) -> pd.DataFrame:
        p = self.paired
        rows = {"shared rows": p.shared, f"{self.a} {self.metric}": self.a_mean,
                f"{self.b} {self.metric}": self.b_mean, "difference (A − B)": p.difference.mean,
                "95 % CI low": p.difference.low, "95 % CI high": p.difference.high,
                "interval": p.difference.method}
        if self.binary:
            rows |= {f"only {self.a} right": p.a_only, f"only {self.b} right": p.b_only,
                     "McNemar p (exact)": p.mcnemar_p}
        return pd.DataFrame({"": list(rows), "value": [_cell(v) for v in rows.values()]})

    def __repr__(self) -> str:
        return self.sentence + "\n" + self.table().to_string(index=False, header=False)

    def _repr_html_(self) -> str:
        table = self.table().to_html(index=False, header=False, classes="llm-magics-compare")
        return f"<div><b>{html.escape(self.sentence)}</b></div>{table}"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def per_item_frame(run: Any, name: str, store: RunStore | None = None) -> pd.DataFrame:
    """A run's per-item predictions: a Result's own frame or file, or the file a run id's record names."""
    if isinstance(run, str):
        store = store or RunStore(current().runs_path)
        record = store.get(run)
        if record is None:
            raise UsageError(f"no recorded run {run!r} (%llm runs lists recorded runs; a variable holding a Result "
                             "also works)")
        path, method = (record.get("artifacts") or {}).get(predictions.FILE_KEY), record.get("method")
    elif hasattr(run, "artifacts") and hasattr(run, "metrics"):
        frame = getattr(run, "predictions", None)
        if isinstance(frame, pd.DataFrame) and {"item_id", "correct"} <= set(frame.columns):
            return frame
        path, method = run.artifacts.get(predictions.FILE_KEY), run.method
    else:
        raise UsageError(f"{name} is a {type(run).__name__}; compare --paired takes run ids or Results")
    if not path:
        raise UsageError(f"{name} ({method}) has no per-item predictions to pair: {predictions.KEPT_BY} keep them "
                         "for runs that score a test set")
    try:
        return predictions.load(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{name}'s per-item predictions {path} cannot be read ({exc}); run it again") from None


def compare_paired(a: Any, b: Any, metric: str = "correct", names: tuple[str, str] | None = None) -> PairedRuns:
    """A against B on the test rows both scored: the difference in `metric` (a per-item column: `correct`
    for accuracy, `score`) with a paired bootstrap interval, and the exact McNemar test for 0/1 scores."""
    names = names or tuple(r if isinstance(r, str) else (getattr(r, "run_id", "") or label)
                           for r, label in ((a, "A"), (b, "B")))
    store = RunStore(current().runs_path)
    frames = [per_item_frame(run, name, store) for run, name in zip((a, b), names)]
    for frame, name in zip(frames, names):
        if metric not in frame.columns:
            columns = [c for c in ("correct", "score") if c in frame.columns]
            raise UsageError(f"--metric {metric}: {name}'s per-item predictions have no such column; "
                             f"a paired comparison takes {' or '.join(columns)}")
    try:
        left, right = stats.pair_items(frames[0].dropna(subset=[metric]), frames[1].dropna(subset=[metric]), metric)
    except ValueError:
        raise UsageError(f"{names[0]} and {names[1]} share no test rows: a paired comparison needs runs scored "
                         "on the same test set (rows pair by their text)") from None
    if len(left) < 2:
        raise UsageError(f"{names[0]} and {names[1]} share {len(left)} test row: a paired comparison needs at "
                         "least 2")
    paired = stats.paired_difference(left, right)
    # a --seeds aggregate keeps each item's correctness averaged over its seeds: a fraction, compared as one
    shown = SEED_AVERAGED if metric == "correct" and paired.mcnemar_p is None else metric
    return PairedRuns(names[0], names[1], shown, float(left.mean()), float(right.mean()), paired)
