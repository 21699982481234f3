"""Seeds summed up: N runs of one setting as each metric's mean with its 95 % intervals.

One copy of the arithmetic `--seeds N` (the runner's aggregate run), `%llm ladder` (each rung's seeds),
`%llm compare` and a sweep's leaderboard all read:

- `aggregate(records)`: per metric, the mean over seeds with Student's t interval (`stats.t_interval`: the
  seeds' spread); and, when every seed kept per-item predictions, the test items' correctness averaged over the
  seeds with a bootstrap over test rows (`stats.bootstrap_interval`: the test set's own sampling error, which
  more seeds do not shrink).
- `SeedAggregate.metrics()`: the flat metrics an aggregate run records — `m` (the mean), `m_sd`, `m_t_low`,
  `m_t_high`, and for the test score `m_rows_low`, `m_rows_high` — so the run store, `%llm compare` and a
  sweep's rows hold the intervals with no new column; `interval_of(metrics, m)` reads one back.
- `not_distinguishable(a, b, m)`: Welch's t-test on two aggregates' per-seed means (scipy), for marking
  leaderboard rows that cannot be told from the best.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from . import predictions, stats

# The test score the bootstrap over rows belongs to: the mean of the per-item `correct` column is this metric.
ROWS_METRICS = ("test_accuracy", "test_exact_match")
T_NAME = "Student's t over seeds"
ROWS_NAME = "bootstrap over test rows (seed-averaged correctness)"
SUFFIXES = ("_sd", "_t_low", "_t_high", "_rows_low", "_rows_high")
SEEDS_KEY = "seeds"
VS_BEST = "vs best"   # the leaderboard column marking each point against the best: best, ≈ best, worse


def per_item(record: dict) -> pd.DataFrame | None:
    """A run record's per-item predictions: the frame it carries (`predictions_frame`) or its Parquet file."""
    frame = record.get("predictions_frame")
    if isinstance(frame, pd.DataFrame) and {"item_id", "correct"} <= set(frame.columns):
        return frame
    path = (record.get("artifacts") or {}).get(predictions.FILE_KEY)
    try:
        return predictions.load(path) if path else None
    except (OSError, ValueError):
        return None


def seed_averaged(records: list[dict]) -> pd.Series | None:
    """Each test item's correctness averaged over the seeds (None unless every seed kept per-item predictions);
    items pair on `item_id`, so a seed that drew its split differently still lines up on the items it shares."""
    frames = [per_item(r) for r in records]
    if not frames or any(f is None for f in frames):
        return None
    per_seed = [f.groupby("item_id")["correct"].mean() for f in frames]
    return pd.concat(per_seed, axis=1).dropna().mean(axis=1).rename("correct")


def _numbers(records: list[dict]) -> dict[str, list[float]]:
    """Each numeric metric's value per seed, for the metrics every seed reported (in the first seed's order)."""
    out: dict[str, list[float]] = {}
    for name, value in (records[0].get("metrics") or {}).items():
        values = [(r.get("metrics") or {}).get(name) for r in records]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[name] = [float(v) for v in values]
    return out


@dataclass
class SeedAggregate:
    seeds: list[int]                                  # the seeds, in the order they ran
    run_ids: list[str]
    values: dict[str, list[float]]                    # metric -> its value per seed
    intervals: dict[str, stats.Interval]              # metric -> mean with Student's t over seeds
    rows: stats.Interval | None = None                # the test score's bootstrap over rows, seed-averaged
    rows_metric: str | None = None                    # which metric `rows` is the interval of
    correct: pd.Series | None = field(default=None, repr=False)   # per item (item_id), seed-averaged

    def metrics(self) -> dict[str, float]:
        """The aggregate run's flat metrics: each mean first, then its spread and intervals (see the module)."""
        out: dict[str, float] = {name: interval.mean for name, interval in self.intervals.items()}
        for name, interval in self.intervals.items():
            spread = float(np.std(self.values[name], ddof=1)) if len(self.seeds) > 1 else 0.0
            out |= {f"{name}_sd": spread, f"{name}_t_low": interval.low, f"{name}_t_high": interval.high}
        if self.rows is not None and self.rows_metric:
            out |= {f"{self.rows_metric}_rows_low": self.rows.low, f"{self.rows_metric}_rows_high": self.rows.high}
        out[SEEDS_KEY] = len(self.seeds)
        return out

    def table(self) -> pd.DataFrame:
        """One row per metric: the mean and both intervals, each named."""
        rows = []
        for name, interval in self.intervals.items():
            rows_interval = self.rows if name == self.rows_metric else None
            rows.append({"metric": name, "mean": interval.mean,
                         "95 % CI, " + T_NAME: _span(interval),
                         "95 % CI, " + ROWS_NAME: _span(rows_interval) if rows_interval else ""})
        return pd.DataFrame(rows)

    def per_seed(self) -> pd.DataFrame:
        """One row per seed: its run id and metrics."""
        return pd.DataFrame({"seed": self.seeds, "run_id": self.run_ids, **self.values})

    def predictions(self) -> pd.DataFrame | None:
        """The seed-averaged per-item frame (`item_id`, `correct` a fraction): what `--paired` compares."""
        if self.correct is None:
            return None
        return self.correct.rename("correct").rename_axis("item_id").reset_index()


def _span(interval: stats.Interval) -> str:
    return f"{interval.low:.4g} to {interval.high:.4g}"


def aggregate(records: list[dict], seeds: list[int]) -> SeedAggregate:
    """The seeds' runs (run records, optionally with `predictions_frame`) summed up."""
    if not records:
        raise ValueError("no finished seed to sum up")
    values = _numbers(records)
    intervals = {name: stats.t_interval(v) for name, v in values.items()}
    correct = seed_averaged(records)
    rows_metric = next((m for m in ROWS_METRICS if m in values), None)
    rows = stats.bootstrap_interval(correct.to_numpy()) if correct is not None and len(correct) >= 2 else None
    return SeedAggregate(list(seeds), [r.get("run_id", "") for r in records], values, intervals, rows,
                         rows_metric if rows is not None else None, correct)


def interval_of(metrics: dict, metric: str) -> tuple[stats.Interval | None, stats.Interval | None]:
    """An aggregate's recorded (t over seeds, bootstrap over rows) intervals of `metric`; None where absent."""
    mean, n = metrics.get(metric), metrics.get(SEEDS_KEY)
    if not isinstance(mean, (int, float)) or not n:
        return None, None
    t = (stats.Interval(float(mean), metrics[f"{metric}_t_low"], metrics[f"{metric}_t_high"], int(n),
                        f"t over {int(n)} seeds") if f"{metric}_t_low" in metrics else None)
    rows = (stats.Interval(float(mean), metrics[f"{metric}_rows_low"], metrics[f"{metric}_rows_high"], 0,
                           "bootstrap over test rows") if f"{metric}_rows_low" in metrics else None)
    return t, rows


def not_distinguishable(a: dict, b: dict, metric: str, confidence: float = stats.CONFIDENCE) -> bool | None:
    """Whether two aggregates' metrics (flat, as recorded) cannot be told apart: Welch's t-test on their per-seed
    means (scipy's `ttest_ind_from_stats`) does not reject equal means. None when either has no spread recorded
    (one seed, or every seed alike) and so nothing to test."""
    parts = []
    for m in (a, b):
        mean, sd, n = m.get(metric), m.get(f"{metric}_sd"), m.get(SEEDS_KEY)
        if not isinstance(mean, (int, float)) or sd is None or not n or n < 2:
            return None
        parts.append((float(mean), float(sd), int(n)))
    (m1, s1, n1), (m2, s2, n2) = parts
    if s1 == 0 and s2 == 0:
        return m1 == m2
    p = scipy_stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue
    return bool(p >= 1 - confidence)
