"""Paired comparisons of two runs on their shared test rows (`%llm compare A B --paired`), and the run
record that keeps a method and its command apart."""
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_magics.runs import RunStore


# ---- the record: method and command apart ---------------------------------------------------------
OLD_COLUMNS = ("run_id TEXT PRIMARY KEY, created REAL, method TEXT, model TEXT, status TEXT, options TEXT, "
               "data_fingerprint TEXT, metrics TEXT, trainable_params INTEGER, total_params INTEGER, wall_s REAL, "
               "rows_per_s REAL, tokens_per_s REAL, peak_mem_bytes INTEGER, device TEXT, dtype TEXT, "
               "artifacts TEXT, sweep_id TEXT")


def old_store(path):
    """A run store written before the record had a `command` column: "rlhf dpo" joined in `method`."""
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE runs ({OLD_COLUMNS})")
        for i, method in enumerate(("probe", "rlhf dpo", "rlhf reward")):
            conn.execute("INSERT INTO runs (run_id, created, method, options, metrics, artifacts) "
                         "VALUES (?, ?, ?, '{}', ?, '{}')", (f"old-{i}", 100.0 + i, method,
                                                             json.dumps({"test_accuracy": 0.5 + i / 10})))
    # and a record an older version kept aside in the side file
    (path.parent / (path.name + ".pending.jsonl")).write_text(
        json.dumps({"run_id": "old-aside", "created": 99.0, "method": "rlhf ppo", "options": {}, "metrics": {},
                    "artifacts": {}}) + "\n")


def raw_rows(path):
    with sqlite3.connect(path) as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT run_id, method, command FROM runs")}


def test_an_old_store_reads_with_the_command_apart_and_is_migrated_once_on_write(tmp_path):
    path = tmp_path / "runs.sqlite"
    old_store(path)
    store = RunStore(path)
    # read before any write: the file is not touched, the rows come back split
    rows = {r["run_id"]: (r["method"], r["command"]) for r in store.list()}
    assert rows == {"old-0": ("probe", None), "old-1": ("rlhf", "dpo"), "old-2": ("rlhf", "reward"),
                    "old-aside": ("rlhf", "ppo")}
    assert "command" not in {c[1] for c in sqlite3.connect(path).execute("PRAGMA table_info(runs)")}
    # what the user sees is as before: the joined name
    assert sorted(store.frame()["method"]) == ["probe", "rlhf dpo", "rlhf ppo", "rlhf reward"]
    assert [r["run_id"] for r in store.list(method="rlhf dpo")] == ["old-1"]
    assert {r["run_id"] for r in store.list(method="rlhf")} == {"old-1", "old-2", "old-aside"}
    # the first write adds the column, splits the old names in place and imports the side file's record
    assert store.record({"run_id": "new-0", "method": "rlhf", "command": "kto", "metrics": {}}) is None
    assert raw_rows(path) == {"old-0": ("probe", None), "old-1": ("rlhf", "dpo"), "old-2": ("rlhf", "reward"),
                              "old-aside": ("rlhf", "ppo"), "new-0": ("rlhf", "kto")}
    # once: a method that is recorded with a space later is not split again (nothing records one, but the
    # migration must not run on every open)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET method = 'x y' WHERE run_id = 'old-0'")
    store.record({"run_id": "new-1", "method": "probe", "command": None, "metrics": {}})
    assert raw_rows(path)["old-0"] == ("x y", None)


def test_the_runner_records_method_and_command_apart_and_the_result_reads_as_typed(tmp_path):
    from llm_magics import settings
    from llm_magics.method import Result
    from llm_magics.runner import RunContext, finish

    @dataclass
    class Options:
        beta: float = 0.1

    ctx = RunContext("rlhf-1", "rlhf", settings.current(), command="dpo")
    result = Result(method="rlhf dpo", metrics={"steps": 2})     # what the method named it
    finish(result, ctx, Options(), 1.0, 0)
    row = ctx.store.get("rlhf-1")
    assert (row["method"], row["command"]) == ("rlhf", "dpo") == (result.method, result.command)
    assert result.title == "rlhf dpo" and result.summary_line().startswith("rlhf dpo · run rlhf-1")
    assert ctx.store.frame()["method"].tolist() == ["rlhf dpo"]


def test_a_job_folder_names_method_and_command_and_an_older_one_still_reads():
    from llm_magics.jobs.job import job_method
    assert job_method({"method": "rlhf", "command": "dpo"}) == ("rlhf", "dpo")
    assert job_method({"method": "finetune", "command": None}) == ("finetune", None)
    assert job_method({"method": "rlhf reward"}) == ("rlhf", "reward")       # exported before the split


# ---- per-item predictions of %%icl ---------------------------------------------------------------
def tiny_icl(model, **kwargs):
    from llm_magics import api
    return api.icl(model=str(model), dtype="float32", **kwargs)


def test_icl_keeps_per_item_predictions_in_the_shared_format(tiny_llama, demo):
    from llm_magics.runs import predictions, stats
    train, test = demo
    data = test.head(12).copy()
    data["label"] = data["label"].astype(object)
    data.loc[[3], "label"] = None                                     # a row without gold is not scored
    result = tiny_icl(tiny_llama, template="Review: {text}\nSentiment: {label}", data=data, demos=train, shots=2,
                      labels=["negative", "positive"], zero_shot=False)
    frame = result.predictions
    assert {*predictions.COLUMNS, "row", "gold", "logp_negative", "logp_positive"} <= set(frame.columns)
    assert frame["item_id"].tolist() == [stats.item_id(t) for t in data["text"]]   # the row's text field
    assert frame["correct"].isna().tolist() == [i == 3 for i in range(12)]
    assert frame["correct"].mean() == pytest.approx(result.metrics["test_accuracy"])   # NaN rows left out
    # the score is the chosen label's probability after calibration: the larger of the two
    logp = frame[["logp_negative", "logp_positive"]].to_numpy()
    probs = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(frame["score"], probs.max(axis=1), rtol=1e-6)
    assert (frame["score"] >= 0.5).all()
    saved = predictions.load(result.artifacts["predictions"])
    pd.testing.assert_frame_equal(saved, frame)


def test_icl_generation_keeps_exact_match_per_item(tiny_llama):
    data = pd.DataFrame({"question": [f"q {i}" for i in range(4)], "label": ["a", "b", "", "d"]})
    result = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, max_tokens=2,
                      stream=False)
    frame = result.predictions
    assert frame["prediction"].tolist() == frame["output"].tolist() and frame["score"].isna().all()
    assert frame["correct"].isna().tolist() == [False, False, True, False]
    assert frame["correct"].mean() == pytest.approx(result.metrics["test_exact_match"])
    assert Path(result.artifacts["predictions"]).exists()
