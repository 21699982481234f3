"""The tuning panel's Ladder tab, driven in Python: its line, a run on tiny models, and Stop."""
import threading

import pytest

from llm_magics import options as opts
from llm_magics.tune.ladder import LadderOptions
from tests.helpers import word_task

LADDER_TAB = 4


@pytest.fixture
def panel(shell, tiny_bert, tiny_llama):
    frame, _, _ = word_task(120)
    shell.user_ns["train_df"] = frame[:80].reset_index(drop=True)
    shell.user_ns["test_df"] = frame[80:].reset_index(drop=True)
    panel = shell.run_cell("%llm tune probe").result
    panel.fields["data"][1].value = "train_df"
    panel.fields["test"][1].value = "test_df"
    tab = panel.ladder_tab
    tab.fields["model_encoder"].value = str(tiny_bert)
    tab.fields["model_causal"].value = str(tiny_llama)
    return panel


def test_the_ladder_tab_takes_the_run_tabs_data_and_shows_the_line_it_runs(panel):
    assert panel.tabs.titles[LADDER_TAB] == "Ladder"
    tab = panel.ladder_tab
    assert tab.fields["data"].value == ""
    panel.tabs.selected_index = LADDER_TAB
    assert tab.fields["data"].value == "train_df" and tab.fields["test"].value == "test_df"
    assert {"train_df", "test_df"} <= set(tab.fields["data"].options)
    tab.fields["rungs"].value = "probe; lora --r 4"
    tab.fields["seeds"].value = "2"
    tab.fields["budget"].value = "5m"
    line = tab.magic_line()
    assert line.startswith("%llm ladder --data train_df --test test_df") and line.endswith("--out lad")
    assert "--rungs 'probe; lora --r 4'" in line and "--seeds 2" in line and "--budget 5m" in line
    parsed = opts.parse_line(LadderOptions, tab.tokens(), "llm ladder")
    assert (parsed.data, parsed.test, parsed.rungs, parsed.seeds, parsed.budget) == \
        ("train_df", "test_df", "probe; lora --r 4", 2, "5m")
    assert "--rungs" in tab.line.value and "lora --r 4" in tab.line.value


def test_a_mistake_in_the_ladder_tab_is_one_line_and_starts_nothing(panel, store):
    tab = panel.ladder_tab
    panel.tabs.selected_index = LADDER_TAB
    for field, value, message in [("seeds", "0", "--seeds"), ("budget", "soon", "--budget"),
                                  ("rungs", "probe; nosuchmethod", "nosuchmethod")]:
        tab.fields[field].value = value
        assert tab.run() is None and message in tab.error.value and "Traceback" not in tab.error.value
        tab.fields[field].value = "3" if field == "seeds" else ""
    assert tab.ladder is None and store.list() == [] and "lad" not in panel.namespace


def test_the_ladder_tab_runs_the_ladder_with_its_live_table(panel):
    tab = panel.ladder_tab
    panel.tabs.selected_index = LADDER_TAB
    tab.fields["rungs"].value = "probe; icl --shots 1"
    tab.fields["seeds"].value = "2"
    tab.run_button.click()
    assert tab.ladder is not None and panel.namespace["lad"] is tab.ladder
    assert panel.wait(300) and tab.ladder.status == "done"
    assert [r.status for r in tab.ladder.rungs] == ["ok", "ok"]
    board = tab.view.board.value
    assert board.count(">ok<") == 2 and tab.ladder.result().sentence in tab.view.snapshot_html()
    assert tab.view.stop_button.description == "Ladder done"
    assert "%llm ladder --data train_df" in panel.snapshot_html() and "icl --shots 1" in panel.snapshot_html()


def test_stop_in_the_ladder_tab_ends_the_current_run_and_skips_the_rest(panel):
    tab = panel.ladder_tab
    panel.tabs.selected_index = LADDER_TAB
    tab.fields["rungs"].value = "finetune --train all --epochs 500; probe"
    tab.fields["seeds"].value = "2"
    tab.run()
    training = threading.Event()

    def seen(_change):   # the live view redraws on each event of the current run
        current = tab.ladder.current
        if current is not None and current.progress.state.done >= 1:
            training.set()
    tab.view.live.observe(seen, "value")
    assert training.wait(240)      # the first rung has taken a training step
    tab.stop()
    assert tab.view.stop_button.disabled and tab.ladder.stopping
    assert tab.ladder.wait(180) and tab.ladder.status == "stopped"
    first, second = tab.ladder.rungs
    assert first.status == "stopped" and "stopped during seed 0" in first.reason
    assert second.status == "skipped" and "stopped" in second.reason
    assert not tab.running and tab.view.stop_button.description == "Ladder stopped"
