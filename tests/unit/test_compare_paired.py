"""Paired comparisons of two runs on their shared test rows (`%llm compare A B --paired`), and the run
record that keeps a method and its command apart."""
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_magics.errors import UsageError
from llm_magics.runs import RunStore, predictions


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
    from llm_magics.runs import stats
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


# ---- %llm compare A B --paired -------------------------------------------------------------------
def made_up(correct, texts=None, method="probe"):
    """A Result whose per-item predictions are given: 0/1 correctness over texts."""
    from llm_magics.method import Result
    texts = texts or [f"item {i}" for i in range(len(correct))]
    frame = predictions.per_item(texts, ["a"] * len(texts), ["a" if c else "b" for c in correct])
    return Result(method=method, run_id=f"{method}-{len(texts)}", predictions=frame)


def test_the_sentence_says_which_run_is_above_with_the_evidence():
    from llm_magics import api
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.9).astype(int)
    b = np.where(rng.random(400) < 0.5, a, (rng.random(400) < 0.6).astype(int))
    paired = api.compare_paired(made_up(a), made_up(b), names=("A", "B"))
    p = paired.paired
    assert p.shared == 400 and p.a_only == int(((a == 1) & (b == 0)).sum())
    assert p.b_only == int(((a == 0) & (b == 1)).sum())
    d = p.difference
    assert d.mean == pytest.approx(a.mean() - b.mean()) and d.low > 0
    assert paired.sentence == (f"A is {100 * d.mean:.1f} points above B on correct (95 % CI {100 * d.low:.1f} to "
                               f"{100 * d.high:.1f}, McNemar p = {p.mcnemar_p:.2g}, 400 shared rows)")
    reverse = api.compare_paired(made_up(b), made_up(a), names=("B", "A"))
    assert reverse.sentence.startswith(f"B is {100 * d.mean:.1f} points below A")
    same = api.compare_paired(made_up(a), made_up(a), names=("A", "A2"))
    assert same.sentence.startswith("A and A2 cannot be told apart on correct: the difference is 0.0 points")
    assert "McNemar p (exact)" in same._repr_html_() and "only A right" in repr(same)


def test_two_probe_runs_pair_across_a_reordered_test_frame_by_result_and_by_run_id(tiny_bert, demo):
    from llm_magics import api
    train, test = demo
    first = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")
    again = api.probe(model=str(tiny_bert), data=train, test=test.sample(frac=1.0, random_state=3), dtype="float32")
    by_result = api.compare_paired(first, again)
    by_id = api.compare_paired(first.run_id, again.run_id)     # from the files the records name
    for paired in (by_result, by_id):
        assert paired.paired.shared == test.text.nunique() and paired.paired.difference.mean == 0.0
        assert paired.a_mean == pytest.approx(first.metrics["test_accuracy"], abs=0.02)
        assert "cannot be told apart" in paired.sentence and first.run_id in paired.sentence
    # a run on other rows shares none: one line
    other = api.probe(model=str(tiny_bert), data=train.head(120), test=train.tail(40), dtype="float32")
    with pytest.raises(UsageError) as info:
        api.compare_paired(first, other.run_id)
    assert "share no test rows" in str(info.value) and "\n" not in str(info.value)


def test_a_run_without_per_item_predictions_is_one_line(store):
    from llm_magics import api
    from llm_magics.method import Result
    store.record({**Result(method="finetune", run_id="finetune-1").record()})
    for run in ("finetune-1", Result(method="lora", run_id="lora-1")):
        with pytest.raises(UsageError) as info:
            api.compare_paired(run, made_up([1, 0, 1]))
        message = str(info.value)
        assert "has no per-item predictions" in message and f"{predictions.KEPT_BY} keep them" in message
        assert "\n" not in message
    with pytest.raises(UsageError, match="no recorded run 'nope'"):
        api.compare_paired("nope", made_up([1, 0, 1]))
    with pytest.raises(UsageError, match="--metric test_accuracy: .* takes correct or score"):
        api.compare_paired(made_up([1, 0, 1]), made_up([1, 1, 1]), metric="test_accuracy")


def test_probe_and_icl_pair_on_the_same_test_rows(tiny_bert, tiny_llama, demo):
    from llm_magics import api
    train, test = demo
    rows = test.drop_duplicates("text").head(12)
    probe = api.probe(model=str(tiny_bert), data=train, test=rows, dtype="float32")
    icl = tiny_icl(tiny_llama, template="Review: {text}\nSentiment: {label}", data=rows, demos=train, shots=2,
                   labels=["negative", "positive"], zero_shot=False)
    paired = api.compare_paired(probe.run_id, icl.run_id)
    assert paired.paired.shared == 12
    assert paired.a_mean == pytest.approx(probe.metrics["test_accuracy"])
    assert paired.b_mean == pytest.approx(icl.metrics["test_accuracy"])
    assert paired.paired.a_only - paired.paired.b_only == round(12 * (paired.a_mean - paired.b_mean))


def test_the_magic_compares_variables_or_run_ids_and_shows_the_sentence(shell, tiny_bert, demo, capsys):
    from llm_magics import api
    train, test = demo
    shell.user_ns["a"] = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")
    shell.user_ns["b"] = made_up([1] * len(test), test.text.tolist())    # right on every row
    paired = shell.run_line_magic("llm", "compare a b --paired")
    assert paired.sentence.startswith("a is ") and " below b on correct (95 % CI" in paired.sentence
    assert f"{test.text.nunique()} shared rows" in paired.sentence
    shell.run_cell("%llm compare a b --paired")
    assert paired.sentence in capsys.readouterr().out
    by_id = shell.run_line_magic("llm", f"compare {shell.user_ns['a'].run_id} a --paired")
    assert by_id.sentence.startswith(f"{shell.user_ns['a'].run_id} and a cannot be told apart")
    with pytest.raises(UsageError, match="--paired takes two runs"):
        shell.run_line_magic("llm", "compare a --paired")
