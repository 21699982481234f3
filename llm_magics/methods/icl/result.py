"""What an `%%icl` run hands back: the Result, its tables, and the metrics it is scored by."""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import UsageError
from ...method import Result
from ...progress.theme import FAINT, scroll_box
from .prompts import normalise_answer

ROWS_SHOWN = 10   # rows of the per-row table in the cell; result.predictions holds them all
RANKED = ("rows", "accuracy", "f1", "uncalibrated_accuracy", "zero_shot_accuracy", "zero_shot_f1", "exact_match",
          "contains")


@dataclass(repr=False)
class IclResult(Result):
    """Also predicts: `result.predict(rows)` runs the best template on new rows (a DataFrame or dicts) the
    way the run did: scored labels (calibrated too when the run was), or generated answers.

    `tables["demonstrations"]` lists the demonstrations every query saw (pool row, answer, fields)
    and a note says how they were chosen."""
    predictions: pd.DataFrame | None = field(default=None, repr=False)
    prompt: str = ""
    _predictor: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        note = one_class_note(self.predictions, self.label_names)
        if note:
            self.notes.append(note)

    def predict(self, rows) -> list[str]:
        """Labels (or answers) for `rows`: a DataFrame, dicts, or plain strings (one text, or a list of
        them), which fill the template's one field."""
        if self._predictor is None:
            raise RuntimeError("the model was released (%llm free); run %%icl again to predict")
        return self._predictor(self._as_rows(rows))

    def _as_rows(self, rows):
        if isinstance(rows, str):
            rows = [rows]
        if not (isinstance(rows, (list, tuple)) and rows and all(isinstance(r, str) for r in rows)):
            return rows
        fields = getattr(self._predictor, "query_fields", None) or []
        if len(fields) != 1:
            raise UsageError(f"predict() got plain strings, but the template fills {len(fields)} fields "
                             f"({', '.join('{' + f + '}' for f in fields)}): pass dicts or a DataFrame with "
                             "those columns")
        return [{fields[0]: text} for text in rows]

    def release(self) -> None:
        self._predictor = None

    def _repr_html_(self) -> str:
        body = super()._repr_html_()
        table = rows_table(self.predictions)
        if table is not None and len(table):
            more = len(table) - ROWS_SHOWN
            body += ("<div><i>per row</i></div>"
                     + scroll_box(table.head(ROWS_SHOWN).to_html(index=False, float_format=lambda v: f"{v:.3f}"))
                     + (f"<div style='color:{FAINT};font-size:11px'>… {more} more rows in result.predictions"
                        "</div>" if more > 0 else ""))
        if self.prompt:
            body += ("<details><summary>the prompt of the first row (best template)</summary>"
                     f"<pre style='white-space:pre-wrap'>{html.escape(self.prompt)}</pre></details>")
        return body


def rows_table(predictions: pd.DataFrame | None) -> pd.DataFrame | None:
    """What each row asked, its label, the prediction and its score (the predicted label's share of the
    softmax over the label scores): the run read row by row."""
    if predictions is None or not len(predictions):
        return None
    logp = [c for c in predictions.columns if c.startswith("logp_")]
    answer = "prediction" if "prediction" in predictions else "output"
    asked = [c for c in predictions.columns if c not in ("row", "gold", answer, *logp)]
    table = predictions[asked].copy()
    if "gold" in predictions:
        table["label"] = predictions["gold"]
    table[answer] = predictions[answer]
    if logp:
        scores = predictions[logp].to_numpy(dtype=float)
        probs = np.exp(scores - scores.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        table["score"] = probs.max(axis=1)
    return table


def one_class_note(predictions: pd.DataFrame | None, labels: list[str] | None) -> str | None:
    """One line when every row got the same label: the accuracy is then that label's share, not skill."""
    if predictions is None or "prediction" not in predictions or len(predictions) < 2 or len(labels or []) < 2:
        return None
    answers = predictions["prediction"].unique()
    if len(answers) != 1:
        return None
    return (f"every prediction is {answers[0]!r} ({len(predictions)} rows): the accuracy is that label's share "
            "of the data, not skill; try more --shots, another template or a larger model")


def ranking(records: list[dict]) -> pd.DataFrame:
    """The templates side by side, best first: the hard-prompt comparison."""
    table = pd.DataFrame([{"template": r["template"], "text": r["text"], **{k: r[k] for k in RANKED if k in r}}
                          for r in records])
    key = next((k for k in ("accuracy", "exact_match") if k in table), None)
    if key:
        table = table.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def demonstrations_table(pool_rows: list[dict], chosen: list[int], slot: str, fields: list[str],
                         answers: list[str]) -> pd.DataFrame:
    """The fixed demonstrations in prompt order: their row in --demos, the answer they show, their fields."""
    frame = pd.DataFrame({"position": range(1, len(chosen) + 1), "demos_row": chosen, slot: answers})
    for name in fields:
        if name != slot and name not in frame:
            frame[name] = [pool_rows[i].get(name, "") for i in chosen]
    return frame


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, n_labels: int, prefix: str) -> dict:
    """Accuracy and macro F1 over the rows with a gold label (code >= 0)."""
    from sklearn.metrics import f1_score
    known = gold >= 0
    gold, predicted = gold[known], predicted[known]
    if not len(gold):
        return {}
    return {f"{prefix}accuracy": float((gold == predicted).mean()),
            f"{prefix}f1": float(f1_score(gold, predicted, labels=list(range(n_labels)), average="macro",
                                          zero_division=0))}


def generation_metrics(outputs: list[str], answers: list[list[str]]) -> dict:
    """SQuAD-style exact match, and whether a gold answer appears in the output, over rows with answers."""
    exact, contains, counted = 0, 0, 0
    for output, golds in zip(outputs, answers):
        if not golds:
            continue
        counted += 1
        said = normalise_answer(output)
        normal = [normalise_answer(g) for g in golds]
        exact += any(said == g for g in normal)
        contains += any(g and g in said for g in normal)
    return {"exact_match": exact / counted if counted else float("nan"),
            "contains": contains / counted if counted else float("nan")}
