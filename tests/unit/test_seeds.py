"""--seeds N: decided once in the runner; N recorded runs linked to one aggregate with named 95 % intervals."""
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from llm_magics import api
from llm_magics.common_options import BackgroundOptions, RunOptions, SeedOptions
from llm_magics.errors import UsageError
from llm_magics.method import Method, Result
from llm_magics.options import option
from llm_magics.runner import SeedsResult, execute
from llm_magics.runs import predictions, seeds, stats

from tests.helpers import one_usage_line, REPO_ROOT


# ---- a fake method: each seed's score and per-item correctness are known --------------------------------------
ITEMS = [f"item {i}" for i in range(40)]


@dataclass
class FakeOptions(RunOptions, BackgroundOptions, SeedOptions):
    seed: int = option(0, "seed")
    pause: float = option(0.0, "seconds each run takes")


class FakeMethod(Method):
    name = "fake"
    Options = FakeOptions
    seed_controls = ("which items are right",)

    def run(self, o: FakeOptions, ctx) -> Result:
        progress = ctx.progress("fake")
        progress.start(10, "steps")
        stopped = False
        for _ in range(10):
            if progress.should_stop:
                stopped = True
                break
            time.sleep(o.pause / 10)
            progress.advance(1, loss=1.0)
        correct = np.random.default_rng(o.seed).random(len(ITEMS)) < 0.6 + 0.05 * o.seed
        frame = predictions.per_item(ITEMS, ["a"] * len(ITEMS), ["a" if c else "b" for c in correct])
        result = Result(method=self.name, metrics={"test_accuracy": float(correct.mean()), "epochs": 1},
                        status="stopped" if stopped else "ok")
        result.predictions = frame
        result.artifacts[predictions.FILE_KEY] = str(predictions.save(frame, ctx.run_dir))
        progress.end(result.status)
        return result


def run_fake(**values):
    return execute("fake", None, FakeOptions(**values), method_cls=FakeMethod, progress_mode="none")


def test_three_seeds_record_three_runs_and_one_aggregate_with_scipys_intervals(store):
    result = run_fake(seeds=3, seed=5)
    assert isinstance(result, SeedsResult) and result.status == "ok"
    records = {r["run_id"]: r for r in store.list()}
    assert len(records) == 4
    children = [r for r in records.values() if r["parent_id"] == result.run_id]
    assert sorted(r["options"]["seed"] for r in children) == [5, 6, 7]
    assert all(r["options"]["seeds"] == 1 for r in children)
    assert records[result.run_id]["parent_id"] is None
    # Student's t over the seeds' scores, as scipy gives it
    values = sorted(r["metrics"]["test_accuracy"] for r in children)
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
    metrics = result.metrics
    assert metrics["test_accuracy"] == pytest.approx(np.mean(values))
    assert (metrics["test_accuracy_t_low"], metrics["test_accuracy_t_high"]) == pytest.approx((low, high))
    assert metrics["test_accuracy_sd"] == pytest.approx(np.std(values, ddof=1))
    assert metrics["seeds"] == 3
    # the bootstrap over test rows is of each item's correctness averaged over the seeds
    per_seed = [predictions.load(r["artifacts"]["predictions"]).set_index("item_id")["correct"] for r in children]
    averaged = pd.concat(per_seed, axis=1).mean(axis=1)
    rows = stats.bootstrap_interval(averaged.to_numpy())
    assert (metrics["test_accuracy_rows_low"], metrics["test_accuracy_rows_high"]) == pytest.approx((rows.low, rows.high))
    pd.testing.assert_series_equal(result.predictions.set_index("item_id")["correct"].sort_index(),
                                   averaged.sort_index(), check_names=False)
    # the Result names both intervals, shows one row per seed and what the seed controlled
    text = repr(result)
    assert "t over 3 seeds" in text and "bootstrap over test rows" in text
    assert list(result.tables["per seed"]["seed"]) == [5, 6, 7]
    assert result.seeded == "seeds 5…7 controlled: which items are right"
    assert "± " in result._repr_html_() and "per seed" in result._repr_html_()
    # recorded: the aggregate's own seed-averaged predictions, and the seeds' run ids
    assert predictions.load(records[result.run_id]["artifacts"]["predictions"])["correct"].max() <= 1.0
    assert set(records[result.run_id]["artifacts"]["seed runs"].split(", ")) == {r["run_id"] for r in children}


def test_compare_shows_the_aggregates_interval_and_folds_its_seeds(store):
    result = run_fake(seeds=3)
    single = run_fake(seed=9)
    shown = api.compare()
    assert set(shown.table["run_id"]) == {result.run_id, single.run_id}
    row = shown.table.set_index("run_id").loc[result.run_id]
    half = (result.metrics["test_accuracy_t_high"] - result.metrics["test_accuracy_t_low"]) / 2
    assert row["95 % CI (t, seeds)"].startswith(f"± {half:.3f}")
    assert row["95 % CI (bootstrap, rows)"].startswith("± ")
    assert shown.table.set_index("run_id").loc[single.run_id]["95 % CI (t, seeds)"] == ""
    assert any("3 per-seed run(s)" in n for n in shown.notes)
    # named explicitly, a seed's run is shown
    child = next(r["run_id"] for r in store.list() if r["parent_id"] == result.run_id)
    assert list(api.compare(runs=[child]).table["run_id"]) == [child]


def test_paired_with_seeds_uses_the_seed_averaged_per_item_scores(store):
    result = run_fake(seeds=3)
    single = run_fake(seed=9)
    paired = api.compare_paired(result.run_id, single.run_id)
    assert paired.metric == "seed-averaged correctness" and paired.paired.mcnemar_p is None
    assert paired.a_mean == pytest.approx(result.predictions["correct"].mean())
    assert paired.paired.shared == len(ITEMS)


def test_seeds_in_the_background_have_one_view_and_one_stop(store):
    handle = run_fake(seeds=4, pause=0.6, bg=True)
    assert handle.run_id.startswith("fake-")
    deadline = time.time() + 20
    while time.time() < deadline and not any(r["parent_id"] == handle.run_id for r in store.list()):
        time.sleep(0.05)   # the first seed is recorded
    handle.stop()
    result = handle.result(timeout=30)
    assert result.status == "stopped" and result.run_id == handle.run_id
    kept = [r for r in store.list() if r["parent_id"] == handle.run_id]
    assert 1 <= result.metrics["seeds"] < 4 and len(result.runs) == result.metrics["seeds"]
    assert len([r for r in kept if r["status"] == "ok"]) == result.metrics["seeds"]
    assert any("seeds finished (stopped)" in n for n in result.notes)
    # one live view: every seed reported into the aggregate's progress, which ended once
    assert [e.kind for e in handle.progress.events].count("end") == 1
    assert any("seed 0 (1 of 4): ok" in m for m in handle.progress.state.messages)


def test_not_distinguishable_is_welchs_test_on_the_recorded_spread():
    a = {"m": 0.80, "m_sd": 0.02, "seeds": 3}
    close = {"m": 0.79, "m_sd": 0.02, "seeds": 3}
    far = {"m": 0.60, "m_sd": 0.01, "seeds": 3}
    p = scipy_stats.ttest_ind_from_stats(0.80, 0.02, 3, 0.79, 0.02, 3, equal_var=False).pvalue
    assert p >= 0.05 and seeds.not_distinguishable(a, close, "m") is True
    assert seeds.not_distinguishable(a, far, "m") is False
    assert seeds.not_distinguishable(a, {"m": 0.7}, "m") is None   # one run: nothing to test


BAD = [
    ("%probe --data df --seeds 0", "--seeds"),
    ("%probe --data df --seeds 101", "--seeds"),
    ("%probe --data df --seed 4294967295 --seeds 2", "largest seed"),
    ("%finetune --data df --seeds 2 --resume last", "--resume"),
]


@pytest.mark.parametrize("cell,word", BAD)
def test_bad_seeds_lines_are_one_line(shell, capsys, cell, word):
    shell.user_ns["df"] = pd.DataFrame({"text": ["a b", "c d"] * 10, "label": ["x", "y"] * 10})
    assert word in one_usage_line(shell, capsys, cell)


def test_seeds_refuse_a_resume_from_python_too():
    @dataclass
    class WithResume(FakeOptions):
        resume: str | None = option(None, "a run")

    class Resumable(FakeMethod):
        Options = WithResume
    with pytest.raises(UsageError, match="--resume"):
        execute("fake", None, WithResume(seeds=2, resume="last"), method_cls=Resumable, progress_mode="none")


def test_icl_seeds_draw_different_demonstrations(tiny_llama, demo, store):
    train, test = demo
    result = api.icl(model=str(tiny_llama), dtype="float32", template="Review: {text}\nSentiment: {label}",
                     data=test.head(10), demos=train, shots=2, select="random", labels=["negative", "positive"],
                     zero_shot=False, seeds=2, seed=3)
    assert isinstance(result, SeedsResult) and result.metrics["seeds"] == 2
    picked = [tuple(r.tables["demonstrations"].iloc[:, -1]) for r in result.runs]
    assert picked[0] != picked[1]
    assert result.seeded == "seeds 3…4 controlled: demonstrations, sampling"
    assert result.aggregate.rows is not None and len(result.predictions) == 10



def test_finetune_seeds_and_a_plugin_on_the_training_base_get_them_for_free(tiny_bert, demo, store):
    import sys

    from llm_magics.runner import build_options
    train, test = demo
    result = api.finetune(model=str(tiny_bert), data=train, test=test, train="last:1", epochs=1, seeds=3,
                          dtype="float32")
    assert isinstance(result, SeedsResult) and result.metrics["seeds"] == 3
    assert len([r for r in store.list() if r["parent_id"] == result.run_id]) == 3 and len(store.list()) == 4
    assert result.aggregate.rows is not None and "test_accuracy_rows_low" in result.metrics
    assert result.predictions["correct"].mean() == pytest.approx(result.metrics["test_accuracy"])
    assert api.compare().table.set_index("run_id").loc[result.run_id]["95 % CI (t, seeds)"].startswith("± ")
    # the BitFit example declares nothing about seeds or predictions
    sys.path.insert(0, str(REPO_ROOT / "examples" / "bitfit"))
    try:
        from llm_magics_bitfit import BitFitMethod
    finally:
        sys.path.pop(0)
    options = build_options(BitFitMethod, None, dict(model=str(tiny_bert), data=train, test=test, epochs=1, seeds=2,
                                                     dtype="float32"))
    bitfit = execute("bitfit", None, options, method_cls=BitFitMethod, progress_mode="none")
    assert isinstance(bitfit, SeedsResult) and len(bitfit.runs) == 2
    assert all(len(r.predictions) == len(test) for r in bitfit.runs)
    assert bitfit.seeded == "seeds 0…1 controlled: data split, data order, head init, dropout"


# ---- a sweep with --seeds: mean ± interval, and the points that cannot be told from the best -----------------
def test_mark_ties_follows_welchs_test_against_the_best():
    from llm_magics.tune.sweep import mark_ties
    board = pd.DataFrame([
        {"m": 0.90, "m_sd": 0.01, "seeds": 3}, {"m": 0.89, "m_sd": 0.02, "seeds": 3},
        {"m": 0.60, "m_sd": 0.01, "seeds": 3}, {"m": float("nan"), "m_sd": float("nan"), "seeds": float("nan")}])
    assert mark_ties(board, "m")[seeds.VS_BEST].tolist() == ["best", "≈ best", "worse", ""]
    assert seeds.VS_BEST not in mark_ties(board[["m"]], "m").columns   # no seeds: no marks


def test_a_sweep_with_seeds_shows_mean_and_interval_and_marks_ties(tiny_bert, demo, store):
    from llm_magics.tune.view import leaderboard_html, leaderboard_text, sweep_plot
    train, test = demo
    sweep = api.sweep("probe", "C=0.01,100", model=str(tiny_bert), data=train, test=test, seeds=3, dtype="float32",
                      wait=True)
    assert [r["status"] for r in sweep.rows] == ["ok", "ok"]
    board = sweep.leaderboard()
    assert board[seeds.VS_BEST].iloc[0] == "best" and board[seeds.VS_BEST].iloc[1] in ("≈ best", "worse")
    assert (board["seeds"] == 3).all()
    first = board.iloc[0]
    half = (first[f"{sweep.metric}_t_high"] - first[f"{sweep.metric}_t_low"]) / 2
    shown = leaderboard_html(sweep)
    assert f"± {half:.3g}" in shown and "vs best" in shown and "Welch" in shown
    assert "_t_low" not in shown   # the interval keys are not columns of their own
    assert f"± {half:.3g}" in leaderboard_text(sweep)
    # the metric against --C, each point's t interval over seeds drawn as a whisker
    from matplotlib.axes import Axes
    drawn, errorbar = [], Axes.errorbar
    Axes.errorbar = lambda self, x, y, **kw: drawn.append((list(x), kw["yerr"])) or errorbar(self, x, y, **kw)
    try:
        assert sweep_plot(sweep) is not None
    finally:
        Axes.errorbar = errorbar
    assert len(drawn) == 1 and len(drawn[0][0]) == 2
    assert sorted(drawn[0][1][0]) == pytest.approx(sorted(board[sweep.metric] - board[f"{sweep.metric}_t_low"]))
    # the sweep's own runs are the two aggregates (their seeds are linked to them, not to the sweep)
    assert set(api.compare(sweep=sweep.id).table["run_id"]) == set(board["run_id"])
    assert len(store.list()) == 2 + 2 * 3


@pytest.mark.multiprocess
def test_seeds_with_devices_run_each_seed_on_torchrun_workers(tiny_bert, demo, store):
    train, test = demo
    result = api.finetune(model=str(tiny_bert), data=train.head(80), test=test.head(30), train="last:1", epochs=1,
                          seeds=2, devices=2, dtype="float32")
    assert isinstance(result, SeedsResult) and result.metrics["seeds"] == 2
    assert len([r for r in store.list() if r["parent_id"] == result.run_id]) == 2
    # the workers' per-item predictions reach the aggregate through each seed's file
    assert result.aggregate.rows is not None and len(result.predictions) == 30
