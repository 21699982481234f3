"""How sure a comparison is: intervals over seeds and test rows, and paired tests on per-item predictions.

Every run that scores a test set can keep one row per test item (`item_id`, label, prediction, score,
`correct`). Two runs pair up on `item_id` — a hash of the item's text, so a reordered or re-split test
frame still pairs — and the tests below work on the shared items only.

The statistics are scipy's (`scipy.stats.t`, `bootstrap`, `binomtest`); this module only decides
which one answers which question and names it in the result:

- `t_interval(values)`: a metric's mean over seeds with Student's t interval (the seeds' spread).
- `bootstrap_interval(correct)`: the mean over test rows of the seed-averaged correctness, with a
  percentile bootstrap over rows (the test set's sampling error, which more seeds do not shrink).
- `paired_difference(a, b)`: the mean per-item difference with a paired bootstrap interval, and for
  0/1 correctness the exact McNemar test (a two-sided binomial test on the discordant pairs).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def item_id(text) -> str:
    """A stable id of a test item: the SHA-1 of its text with surrounding whitespace removed (16 hex)."""
    return hashlib.sha1(str(text).strip().encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int              # seeds (t) or items (bootstrap)
    method: str         # what the interval is over, in words

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.method})"

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def t_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Mean of per-seed values with Student's t interval; one value gives a zero-width interval."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to summarise")
    mean = float(values.mean())
    if values.size == 1:
        return Interval(mean, mean, mean, 1, "one seed: no interval")
    sem = float(stats.sem(values))
    if sem == 0.0:
        return Interval(mean, mean, mean, int(values.size), f"t over {values.size} seeds (all equal)")
    low, high = stats.t.interval(confidence, values.size - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high), int(values.size), f"t over {values.size} seeds")


def bootstrap_interval(scores, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                       seed: int = 0) -> Interval:
    """Mean per-item score (e.g. correctness averaged over seeds) with a percentile bootstrap over items."""
    scores = np.asarray(scores, dtype=float)
    if scores.size < 2:
        raise ValueError("a bootstrap over test rows needs at least 2 rows")
    mean = float(scores.mean())
    if np.all(scores == scores[0]):
        return Interval(mean, mean, mean, int(scores.size), f"bootstrap over {scores.size} rows (all equal)")
    result = stats.bootstrap((scores,), np.mean, confidence_level=confidence, n_resamples=resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), int(scores.size), f"bootstrap over {scores.size} rows")


@dataclass(frozen=True)
class PairedComparison:
    difference: Interval         # mean(a) - mean(b) over shared items, paired bootstrap
    mcnemar_p: float | None      # exact McNemar (0/1 scores only)
    a_only: int                  # items a gets right and b wrong (0/1 scores)
    b_only: int
    shared: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (at its confidence level)."""
        return not self.difference.covers(0.0)


def mcnemar_exact(a_correct, b_correct) -> tuple[float, int, int]:
    """The exact McNemar test: a two-sided binomial test (p = 1/2) on the discordant pairs.
    Returns (p-value, items only a got right, items only b got right)."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if a_only + b_only == 0:
        return 1.0, 0, 0
    return float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue), a_only, b_only


def paired_difference(a_scores, b_scores, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                      seed: int = 0) -> PairedComparison:
    """a − b on the same items: a paired bootstrap interval of the mean difference; with 0/1 scores also the
    exact McNemar test. Seed-averaged scores (fractions) get the interval only."""
    a, b = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("paired scores must have the same length, at least 2")
    diff = a - b
    mean = float(diff.mean())
    if np.all(diff == diff[0]):
        interval = Interval(mean, mean, mean, int(a.size), f"paired bootstrap over {a.size} rows (all equal)")
    else:
        result = stats.bootstrap((a, b), lambda x, y: np.mean(x - y), paired=True, confidence_level=confidence,
                                 n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
        ci = result.confidence_interval
        interval = Interval(mean, float(ci.low), float(ci.high), int(a.size), f"paired bootstrap over {a.size} rows")
    binary = np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()
    p, a_only, b_only = mcnemar_exact(a, b) if binary else (None, 0, 0)
    return PairedComparison(interval, p, a_only, b_only, int(a.size))


def pair_items(a: pd.DataFrame, b: pd.DataFrame, column: str = "correct") -> tuple[np.ndarray, np.ndarray]:
    """Two runs' per-item frames (with `item_id` and `column`) aligned on their shared items.
    Raises ValueError when they share none (the caller turns it into one line for the user)."""
    for frame in (a, b):
        if "item_id" not in frame or column not in frame:
            raise ValueError(f"per-item predictions need the columns item_id and {column}")
    # an item asked twice (duplicate text) counts by its mean, so each side has one value per item
    left = a.groupby("item_id")[column].mean()
    right = b.groupby("item_id")[column].mean()
    shared = left.index.intersection(right.index)
    if len(shared) == 0:
        raise ValueError("the two runs share no test rows: a paired comparison needs the same test set")
    return left.loc[shared].to_numpy(dtype=float), right.loc[shared].to_numpy(dtype=float)
