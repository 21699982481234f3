"""Which column holds the text and which the label, and what the labels mean."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import UsageError, did_you_mean

TEXT_NAMES = ("text", "sentence", "review", "content", "document", "body", "question", "prompt",
              "input", "utterance", "tweet", "comment", "title")
LABEL_NAMES = ("label", "labels", "target", "class", "category", "y", "sentiment", "topic")
MAX_CLASSES = 100


def require_column(frame: pd.DataFrame, name: str, flag: str, role: str = "--data") -> str:
    if name not in frame.columns:
        raise UsageError(f"{flag} {name!r}: no such column in {role}" + did_you_mean(name, map(str, frame.columns))
                         + f" (columns: {', '.join(map(str, frame.columns))})")
    return name


def _texty(series: pd.Series) -> bool:
    if series.dtype != object and not pd.api.types.is_string_dtype(series):
        return False
    sample = series.dropna().head(200)
    return len(sample) > 0 and all(isinstance(v, str) for v in sample)


def infer_text_column(frame: pd.DataFrame, requested: str | None, exclude: tuple = (),
                      flag: str = "--text", role: str = "--data") -> str:
    if requested:
        return require_column(frame, requested, flag, role)
    candidates = [c for c in frame.columns if c not in exclude and _texty(frame[c])]
    named = [c for c in candidates if str(c).lower() in TEXT_NAMES]
    if len(named) == 1:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UsageError(f"{role} has no text column (columns: {', '.join(map(str, frame.columns))}); "
                         f"name one with {flag}")
    # Several string columns: a label column of short strings must not win; the
    # longest texts decide only when clearly longer than all the others.
    lengths = {c: frame[c].dropna().astype(str).str.len().mean() for c in candidates}
    ranked = sorted(candidates, key=lengths.get, reverse=True)
    if lengths[ranked[0]] > 3 * lengths[ranked[1]] and frame[ranked[1]].nunique() <= MAX_CLASSES:
        return ranked[0]
    raise UsageError(f"{role} has several text columns ({', '.join(map(str, candidates))}); "
                     f"pick one with {flag}")


def infer_label_column(frame: pd.DataFrame, requested: str | None, text_column: str,
                       flag: str = "--label", role: str = "--data") -> str:
    if requested:
        return require_column(frame, requested, flag, role)
    others = [c for c in frame.columns if c != text_column]
    named = [c for c in others if str(c).lower() in LABEL_NAMES]
    if len(named) == 1:
        return named[0]
    few = [c for c in others if 1 < _distinct(frame[c]) <= min(MAX_CLASSES, max(2, len(frame) // 2))]
    if len(few) == 1:
        return few[0]
    if not few and not named:
        raise UsageError(f"{role} has no label column (columns: {', '.join(map(str, frame.columns))}); "
                         f"name one with {flag}")
    raise UsageError(f"{role} has several possible label columns ({', '.join(map(str, named or few))}); "
                     f"pick one with {flag}")


def _distinct(series: pd.Series) -> int:
    """Distinct values; 0 for a column of lists or dicts (chat messages), which is never a label column."""
    try:
        return series.nunique()
    except TypeError:
        return 0


_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


def _as_integer(value):
    """The int a label spells (1, 1.0, "1", " 1"), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if np.isfinite(value) and float(value).is_integer() else None
    if isinstance(value, str) and _INTEGER.match(value):
        return int(value)
    return None


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def normalise_labels(series: pd.Series, column: str) -> tuple[pd.Series, str | None]:
    """One spelling per class: labels mixing 1 and "1" (an object column, a csv's labels appended to
    a DataFrame's) would otherwise become two classes both named '1'.

    Mixed kinds become integers when every label spells one, else text; the note says which.
    """
    series = series.dropna()
    kinds = sorted({type(v).__name__ for v in series.tolist()})
    if len(kinds) < 2:
        return series, None
    mixed = f"label column {column!r} mixes {' and '.join(kinds)} values"
    integers = [_as_integer(v) for v in series.tolist()]
    if all(i is not None for i in integers):
        return (pd.Series(integers, index=series.index, dtype="int64"),
                f"{mixed}; read them all as integers (\"1\" and 1 are one class)")
    return series.map(lambda v: str(v).strip()), f"{mixed}; read them all as text"


@dataclass
class LabelCoder:
    """Label values ↔ class ids. Names are strings; ids follow sorted original values."""
    values: list            # original values, in id order
    names: list[str]
    note: str | None = None  # how mixed label kinds were made one (see normalise_labels)

    @classmethod
    def fit(cls, series: pd.Series, column: str) -> "LabelCoder":
        unhashable = next((v for v in series.dropna().tolist() if not _hashable(v)), None)
        if unhashable is not None:
            raise UsageError(f"label column {column!r} holds {type(unhashable).__name__} values (e.g. "
                             f"{str(unhashable)[:40]}); classification needs class labels: integers or strings")
        series, note = normalise_labels(series, column)
        if pd.api.types.is_float_dtype(series) and not np.all(np.isfinite(series.to_numpy())):
            raise UsageError(f"label column {column!r} holds infinite numbers; "
                             "classification needs class labels: integers or strings")
        if pd.api.types.is_float_dtype(series) and not np.all(np.mod(series.to_numpy(), 1) == 0):
            raise UsageError(f"label column {column!r} holds continuous numbers (e.g. {series.iloc[0]}); "
                             "classification needs class labels: integers or strings")
        if pd.api.types.is_float_dtype(series):
            series = series.astype(int)
        values = sorted(series.unique().tolist(), key=lambda v: (str(type(v)), v))
        if len({str(v) for v in values}) < len(values):  # e.g. True and "True" in an object column
            values = sorted({str(v) for v in values})
            note = f"label column {column!r} mixes kinds of values; read them all as text"
        if len(values) < 2:
            shown = values[0] if values else "nothing"
            raise UsageError(f"label column {column!r} has a single class ({shown!r}); "
                             "a classifier needs at least two")
        if len(values) > MAX_CLASSES:
            raise UsageError(f"label column {column!r} has {len(values)} distinct values; that looks like "
                             f"text or ids, not classes (at most {MAX_CLASSES}); pick the label with --label")
        return cls(values=values, names=[str(v) for v in values], note=note)

    def encode(self, series: pd.Series, column: str, role: str) -> np.ndarray:
        if pd.api.types.is_float_dtype(series) and series.notna().all():
            series = series.astype(int)
        index = {v: i for i, v in enumerate(self.values)}
        # Match across int/str spellings ("1" in a csv vs 1 in a DataFrame).
        index.update({str(v): i for i, v in enumerate(self.values)})
        codes = series.map(lambda v: index.get(v, index.get(str(v), index.get(str(v).strip(), -1))))
        unknown = series[codes < 0]
        if len(unknown):
            raise UsageError(f"{role}: label {unknown.iloc[0]!r} in column {column!r} is not among the "
                             f"training labels ({', '.join(self.names)})")
        return codes.to_numpy(dtype=np.int64)
