"""`%llm ladder`: rungs run per seed, the table, the frontier, the recommendation's rule, Stop,
a budget that skips, a plugin as a rung, and the ladder redrawn from the store after the session is cleared."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.helpers import REPO_ROOT, word_task
from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.runs import RunStore
from llm_magics.settings import current
from llm_magics.tune.ladder import LadderResult, pareto, parse_budget, plan_seeds

EXAMPLES = REPO_ROOT / "examples"
THREE_RUNGS = "icl --shots 2; probe; finetune --train head --epochs 1"


@pytest.fixture
def splits():
    frame, _, _ = word_task(120)
    return frame[:80].reset_index(drop=True), frame[80:].reset_index(drop=True)


def models(tiny_bert, tiny_llama) -> dict:
    return {"model_encoder": str(tiny_bert), "model_causal": str(tiny_llama)}


def test_three_rungs_two_seeds_table_frontier_and_recommendation(splits, tiny_bert, tiny_llama):
    train, test = splits
    ladder = api.ladder(train, test, seeds=2, rungs=THREE_RUNGS, **models(tiny_bert, tiny_llama))
    result = ladder.result()
    table = result.table().set_index("rung")
    assert list(table.index) == ["icl --shots 2", "probe", "finetune --train head --epochs 1"]
    assert (table["status"] == "ok").all() and (table["seeds"] == 2).all()
    # every seed is a recorded run carrying the ladder's id, with its seed
    store = RunStore(current().runs_path)
    for rung in result.rungs:
        records = [store.get(run_id) for run_id in rung.run_ids]
        assert [r["sweep_id"] for r in records] == [ladder.id] * 2
        assert sorted(r["options"]["seed"] for r in records) == [0, 1]
        values = [r["metrics"]["test_accuracy"] for r in records]
        assert rung.score.mean == pytest.approx(np.mean(values)) and rung.score.n == 2
    # ICL trains nothing: zero training cost, a per-query latency; every rung keeps per-item predictions (the
    # training base's too), so each has its rows interval and is tested against the best on the paired rows
    assert table.loc["icl --shots 2", "train s"] == 0 and table.loc["icl --shots 2", "latency ms"] > 0
    for label in table.index:
        assert table.loc[label, "rows low"] <= table.loc[label, "test_accuracy"] <= table.loc[label, "rows high"]
    assert all(test.paired for test in result.tests.values())
    # the frontier flags follow the dominance rule on (train s, score)
    points = [(r.label, r.costs["train_s"], r.mean) for r in result.rungs]
    assert set(table.index[table["frontier"]]) == pareto(points)
    assert "icl --shots 2" in result.frontier   # nothing costs less than no training
    # the recommendation: the cheapest rung not significantly below the best
    near = [r for r in result.rungs if r is result.best or result.tests[r.label].within_noise]
    assert result.recommended is min(near, key=lambda r: (r.costs["train_s"], -r.mean))
    assert result.recommended.label in result.sentence
    assert "per-item predictions" not in " ".join(result.notes)   # no rung is compared by intervals only
    page = result._repr_html_()
    assert "<table" in page and "<img" in page and result.sentence in repr(result)


def synthetic(label: str, correct: np.ndarray, train_s: float) -> dict:
    """A rung with one seed whose per-item correctness is `correct` on the same 400 items."""
    frame = pd.DataFrame({"item_id": [f"item{i}" for i in range(len(correct))], "correct": correct.astype(float)})
    record = {"metrics": {"test_accuracy": float(correct.mean())}, "wall_s": train_s, "trainable_params": 10,
              "peak_mem_bytes": 1, "artifacts": {}, "predictions_frame": frame}
    return {"label": label, "line": label, "status": "ok", "reason": "", "run_ids": [], "records": [record]}


def test_the_cheapest_rung_within_noise_wins_and_a_significantly_worse_one_does_not():
    rng = np.random.default_rng(0)
    best = rng.random(400) < 0.85
    close = best.copy()
    close[np.flatnonzero(best)[:4]] = False          # 1 point below the best: noise
    worse = best.copy()
    worse[np.flatnonzero(best)[:80]] = False         # 20 points below: significant
    rungs = [synthetic("cheap but worse", worse, 1.0), synthetic("close", close, 10.0),
             synthetic("all layers", best, 100.0)]
    result = LadderResult("ladder-test", rungs, "test_accuracy", "train_s", 1, "done")
    assert result.best.label == "all layers"
    assert result.tests["cheap but worse"].below and not result.tests["close"].below
    assert result.recommended.label == "close"
    assert result.sentence.startswith("close is within 1.0 points of all layers (p = ")
    assert result.sentence.endswith("at 10 % of its training seconds")
    assert result.frontier == {"cheap but worse", "close", "all layers"}
    # without the close rung the best itself is recommended, and the sentence says why
    alone = LadderResult("ladder-test", [rungs[0], rungs[2]], "test_accuracy", "train_s", 1, "done")
    assert alone.recommended.label == "all layers"
    assert "no cheaper rung is shown to be within noise of it (the nearest, cheap but worse, is 20.0 points " \
        "below, p = " in alone.sentence
    # a one-seed rung without per-item predictions has no interval: neither below nor recommended
    point = synthetic("no predictions", close, 10.0)
    del point["records"][0]["predictions_frame"]
    untested = LadderResult("ladder-test", [point, rungs[2]], "test_accuracy", "train_s", 1, "done")
    assert not untested.tests["no predictions"].tested and untested.recommended.label == "all layers"
    assert "no interval to test" in untested.sentence
    # a dominated rung (costs more, scores less) is off the frontier
    assert pareto([("a", 1.0, 0.9), ("b", 2.0, 0.8), ("c", 3.0, 0.95)]) == {"a", "c"}


def test_stop_ends_the_current_rung_and_skips_the_rest_keeping_the_table(splits, tiny_bert, tiny_llama):
    train, test = splits
    from llm_magics.tune.ladder import LadderOptions, Ladder
    options = LadderOptions(data="train", test="test", seeds=2, rungs="probe; icl --shots 1; finetune --train head",
                            model_encoder=str(tiny_bert), model_causal=str(tiny_llama))
    ladder = Ladder(options, {"train": train, "test": test})
    ladder.on_update.append(lambda lad: lad.stop() if lad.rungs[0].records else None)   # after the first pilot
    ladder.start()
    assert ladder.wait(300) and ladder.status == "stopped"
    first, *rest = ladder.rungs
    assert first.status == "partial" and "stopped" in first.reason and len(first.records) == 1
    assert [r.status for r in rest] == ["skipped", "skipped"] and all("stopped" in r.reason for r in rest)
    table = ladder.result().table()
    assert table.loc[0, "test_accuracy"] == first.records[0]["metrics"]["test_accuracy"]
    assert table["test_accuracy"].isna().tolist() == [False, True, True]


def test_a_budget_skips_what_will_not_fit_and_says_why(splits, tiny_bert, tiny_llama):
    train, test = splits
    ladder = api.ladder(train, test, seeds=2, budget="0.5s", rungs="probe; finetune --train all --epochs 20",
                        **models(tiny_bert, tiny_llama))
    second = ladder.rungs[1]
    # how far the first rung got decides which: the budget was spent before the second's pilot (no run), or its
    # pilot ran past its share and was stopped (one stopped run) — on a loaded machine either; never a kept seed
    assert second.status == "skipped" and "budget" in second.reason and not second.records
    assert len(second.run_ids) <= 1 and ("spent" in second.reason) == (not second.run_ids)
    assert second.reason in " ".join(ladder.result().notes)
    assert len(ladder.rungs[0].records) <= 1   # the pilot at most: its second seed does not fit


def test_plan_seeds_keeps_rounds_level_within_the_time_left():
    assert plan_seeds({"a": 10.0, "b": 30.0}, 3, None) == {"a": 2, "b": 2}
    assert plan_seeds({"a": 10.0, "b": 30.0}, 3, 45.0) == {"a": 1, "b": 1}
    assert plan_seeds({"a": 10.0, "b": 30.0}, 3, 25.0) == {"a": 1, "b": 0}
    assert plan_seeds({"a": 10.0}, 1, 0.0) == {"a": 0}


def test_bad_ladder_lines_are_one_line(splits):
    train, test = splits
    with pytest.raises(UsageError, match="--budget '20 minutes'"):
        parse_budget("20 minutes")
    assert parse_budget("1.5h") == 5400 and parse_budget("90") == 90
    with pytest.raises(UsageError, match="nosuchmethod"):
        api.ladder(train, test, rungs="probe; nosuchmethod")
    with pytest.raises(UsageError, match="given twice"):
        api.ladder(train, test, rungs="probe; probe")
    for own in ("probe --seeds 3", "probe --seed=4"):   # the ladder's --seeds decides every rung's seeds
        with pytest.raises(UsageError, match="sets its own seed"):
            api.ladder(train, test, rungs=own)


@pytest.fixture
def bitfit_installed(tmp_path_factory):
    """The BitFit example pip-installed into its own folder (as tests/unit/test_plugin.py does) and discovered."""
    from llm_magics.registry import rediscover
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("bitfit")
    subprocess.run(["cp", "-r", str(EXAMPLES / "bitfit") + "/.", str(source)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)
    sys.path.insert(0, str(site))
    rediscover()
    yield
    sys.path.remove(str(site))
    rediscover()


def test_a_plugin_joins_a_ladder_with_no_code_of_its_own(bitfit_installed, splits, tiny_bert, tiny_llama):
    train, test = splits
    ladder = api.ladder(train, test, seeds=1, rungs="bitfit --epochs 1; probe", **models(tiny_bert, tiny_llama))
    bitfit = ladder.result().table().set_index("rung").loc["bitfit --epochs 1"]
    assert bitfit["status"] == "ok" and 0 < bitfit["trainable"] and bitfit["test_accuracy"] >= 0
    assert RunStore(current().runs_path).get(ladder.rungs[0].run_ids[0])["method"] == "bitfit"


def test_compare_ladder_redraws_it_after_the_session_is_cleared(shell, splits, tiny_bert, tiny_llama):
    train, test = splits
    shell.user_ns.update(train=train, test=test)
    shell.run_line_magic("llm", f"ladder --data train --test test --seeds 1 --rungs \"probe; icl --shots 1\" "
                                f"--model-encoder {tiny_bert} --model-causal {tiny_llama} --out lad")
    ladder = shell.user_ns["lad"]
    assert ladder.wait(300) and ladder.status == "done"
    before = ladder.result()
    shell.run_line_magic("reset", "-f")
    api.free()
    redrawn = shell.run_line_magic("llm", f"compare --ladder {ladder.id}")
    assert isinstance(redrawn, LadderResult) and "lad" not in shell.user_ns
    columns = ["rung", "status", "seeds", "test_accuracy", "rows low", "rows high", "train s", "frontier"]
    pd.testing.assert_frame_equal(redrawn.table()[columns], before.table()[columns])
    assert redrawn.sentence == before.sentence
    with pytest.raises(UsageError, match="no recorded ladder"):
        shell.run_line_magic("llm", "compare --ladder ladder-00000000")


def test_the_widget_view_shows_a_row_per_rung_and_its_stop_skips_the_rest(splits):
    from llm_magics.tune.ladder import Ladder, LadderOptions, LadderView
    train, test = splits
    ladder = Ladder(LadderOptions(data="train", test="test", rungs="probe; icl --shots 1"), {"train": train, "test": test})
    view = LadderView(ladder)
    assert view.board.value.count("<tr") == 3 and "waiting" in view.board.value
    view._stop()
    assert ladder.stopping and view.stop_button.disabled
    ladder.run()
    assert view.stop_button.description == "Ladder stopped" and view.board.value.count(">skipped<") == 2
    assert "nothing to recommend" in view.snapshot_html()
