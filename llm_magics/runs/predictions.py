"""Per-item predictions: one row per scored test item, kept with the run so that runs pair up.

A frame holds `item_id` (a hash of the item's text: `stats.item_id`), `label`, `prediction`, `score`
(the probability the run gave its prediction, when it has one) and `correct` (1.0 / 0.0). It is written
as `predictions.parquet` in the run's folder, whole or not at all, and named in the Result's
artifacts, so `%llm compare A B --paired` finds it after a restart.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .stats import item_id

FILE = "predictions.parquet"
FILE_KEY = "predictions"          # its name in a Result's artifacts
KEPT_BY = ("%probe, %%icl, classifier training (%finetune, %lora, plugins on the training base), "
           "%rlhf reward, %rlhf dpo|kto|orpo and %index eval")   # said when a run without them is compared
COLUMNS = ("item_id", "text", "label", "prediction", "score", "correct")


def per_item(texts: Sequence[str], labels: Sequence, predicted: Sequence, score: Sequence[float] | None = None,
             label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The frame for one scored split. Labels and predictions may be class indices (named through
    `label_names`) or names."""
    def named(values):
        values = list(values)
        if label_names is not None and values and isinstance(values[0], (int, np.integer)):
            return [label_names[int(v)] if int(v) >= 0 else None for v in values]
        return values
    gold, guess = named(labels), named(predicted)
    if not len(texts) == len(gold) == len(guess):
        raise ValueError("texts, labels and predictions differ in length")
    frame = pd.DataFrame({"item_id": [item_id(t) for t in texts], "text": list(texts), "label": gold,
                          "prediction": guess,
                          "score": np.asarray(score, dtype=float) if score is not None else np.nan})
    frame["correct"] = (frame["label"] == frame["prediction"]).astype(float)
    return frame


def save(frame: pd.DataFrame, run_dir: str | Path) -> Path:
    """`predictions.parquet` in the run's folder, written beside and renamed in (never half a file)."""
    target = Path(run_dir) / FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{FILE}.{os.getpid()}.tmp")
    frame.to_parquet(staging, index=False)
    os.replace(staging, target)
    return target


def kept_with_run(frame: pd.DataFrame, run_dir: str | Path, artifacts: dict) -> pd.DataFrame:
    """The frame saved in the run's folder and named in its artifacts (so `--paired` finds it after a restart)."""
    artifacts[FILE_KEY] = str(save(frame, run_dir))
    return frame


def load(path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    missing = [c for c in ("item_id", "correct") if c not in frame]
    if missing:
        raise ValueError(f"{path} is not a per-item predictions file (no {', '.join(missing)} column)")
    return frame
