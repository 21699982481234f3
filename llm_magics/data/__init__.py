"""Resolve the data options every training/evaluating method shares.

`--data` (train, or everything when no other split is given), `--validation`,
`--test`, `--text`, `--label`, `--seed`. Given splits are used as they are;
missing ones are split off `--data`, seeded and stratified.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from .columns import LabelCoder, infer_label_column, infer_text_column, require_column
from .load import describe, load_frame, load_given, load_splits, lookup

__all__ = ["TaskData", "prepare_classification", "load_frame", "load_splits", "fingerprint",
           "split_off", "describe", "lookup", "infer_text_column", "infer_label_column",
           "require_column", "LabelCoder"]


@dataclass
class TaskData:
    """Three splits with normalised columns `text` and `label` (class ids)."""
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: LabelCoder
    text_column: str
    label_column: str
    fingerprint: str
    notes: list[str] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return self.labels.names

    def splits(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "val": self.validation, "test": self.test}


def fingerprint(*frames: pd.DataFrame) -> str:
    """Content hash of the frames (order-sensitive), cheap enough for 100k rows."""
    digest = hashlib.sha1()
    for frame in frames:
        digest.update(str(list(frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(_hashable(frame), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _hashable(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells pandas cannot hash (lists, dicts, arrays: a chat's turns, a query's several answers) as their JSON."""
    listy = [c for c in frame.columns if frame[c].dtype == object
             and frame[c].map(lambda v: isinstance(v, (list, dict, set, tuple, np.ndarray))).any()]
    if not listy:
        return frame
    as_text = lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str, sort_keys=True)  # noqa: E731
    return frame.assign(**{c: frame[c].map(as_text) for c in listy})


def split_off(frame: pd.DataFrame, fraction: float, seed: int, stratify: np.ndarray | None = None):
    """(rest, held_out): stratified when every class has at least two rows."""
    from sklearn.model_selection import train_test_split
    n_held = max(1, int(round(len(frame) * fraction)))
    if len(frame) - n_held < 1:
        raise UsageError(f"only {len(frame)} rows: too few to split off a held-out set; "
                         "pass --validation/--test or more data")
    strat = stratify
    if strat is not None:
        counts = np.bincount(strat)
        if counts[counts > 0].min() < 2 or n_held < len(counts[counts > 0]):
            strat = None
    rest, held = train_test_split(frame, test_size=n_held, random_state=seed, stratify=strat)
    return rest.reset_index(drop=True), held.reset_index(drop=True)


def _clean(frame: pd.DataFrame, text: str, label: str, role: str, notes: list[str]) -> pd.DataFrame:
    if frame.empty:
        raise UsageError(f"{role} is empty; pass a table with at least a few rows")
    kept = frame[[text, label]].dropna()
    kept = kept[kept[text].astype(str).str.strip() != ""]
    dropped = len(frame) - len(kept)
    if dropped:
        notes.append(f"{role}: dropped {dropped} rows with an empty text or label")
    if kept.empty:
        raise UsageError(f"{role} has no row with both a text ({text!r}) and a label ({label!r})")
    return kept.reset_index(drop=True)


def prepare_classification(data: Any, validation: Any = None, test: Any = None, *, text: str | None = None,
                           label: str | None = None, seed: int = 0, val_size: float = 0.1,
                           test_size: float = 0.2, namespace: dict | None = None) -> TaskData:
    """Load, pick columns, encode labels, split what is missing. UsageError on any mistake."""
    if data is None:
        raise UsageError("--data is required: a DataFrame variable, a file path or a dataset name")
    given = load_given(data, validation, test, namespace)
    train = given["train"]
    if train.empty:
        raise UsageError("--data is empty; pass a table with at least a few rows")
    text_col = infer_text_column(train, text)
    label_col = infer_label_column(train, label, text_col)
    if label_col == text_col:
        raise UsageError(f"--text and --label both name column {text_col!r}; the label must be another column")
    notes: list[str] = []
    roles = {"train": "--data", "validation": "--validation", "test": "--test"}
    frames = {}
    for name, frame in given.items():
        require_column(frame, text_col, "--text", roles[name])
        require_column(frame, label_col, "--label", roles[name])
        frames[name] = _clean(frame, text_col, label_col, roles[name], notes)
    coder = LabelCoder.fit(frames["train"][label_col], label_col)
    if coder.note:
        notes.append(coder.note)
    encoded = {name: pd.DataFrame({"text": f[text_col].astype(str).to_numpy(),
                                   "label": coder.encode(f[label_col], label_col, roles[name])})
               for name, f in frames.items()}
    train = encoded["train"]
    if "test" not in encoded:
        train, encoded["test"] = split_off(train, test_size, seed, train["label"].to_numpy())
        notes.append(f"test: {len(encoded['test'])} rows split off --data (seed {seed})")
    if "validation" not in encoded:
        train, encoded["validation"] = split_off(train, val_size, seed, train["label"].to_numpy())
        notes.append(f"validation: {len(encoded['validation'])} rows split off --data (seed {seed})")
    if train["label"].nunique() < 2:
        raise UsageError("after splitting, the training rows hold a single class; pass more data "
                         "or a --validation/--test of your own")
    return TaskData(train=train, validation=encoded["validation"], test=encoded["test"], labels=coder,
                    text_column=text_col, label_column=label_col,
                    fingerprint=fingerprint(train, encoded["validation"], encoded["test"]), notes=notes)
