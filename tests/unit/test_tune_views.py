"""Tuning views a person can read: sweeps by their settings, theme-proof colours, and the small items
(a per-row ICL table, predict on strings, a stopped run's step, %llm help)."""
import pytest

from llm_magics.errors import UsageError
from llm_magics.tune import sweep as sweep_mod
from llm_magics.tune.view import curves_plot, leaderboard_html, parallel_plot, plot_html, sweep_plot


def finished_sweep(grid: str, outcomes: list[dict], metric: str | None = None):
    """A lora sweep over `grid` whose points ended as `outcomes` say (status and metrics), without training:
    what the sweep's thread writes into its rows, written here."""
    from llm_magics.methods.lora import LoraOptions
    axes = sweep_mod.parse_grid(LoraOptions, grid)
    sweep = sweep_mod.Sweep("lora", None, ["--data", "df"], axes, sweep_mod.points(axes), metric)
    for row, outcome in zip(sweep.rows, outcomes):
        row.update(outcome)
        if outcome.get("status") in ("ok", "stopped"):
            row["run_id"] = f"lora-{row['point']:012d}"
            sweep.metric = sweep.metric or sweep_mod._pick_metric(row)
    sweep.ended = 1.0
    return sweep


def test_a_metric_never_overwrites_the_swept_option_of_its_name():
    sweep = finished_sweep("epochs=1,3 lr=1e-4", [
        {"status": "stopped", "val_accuracy": 0.6, "epochs": 0.217},
        {"status": "ok", "val_accuracy": 0.8, "epochs": 3.0}])
    board = sweep.leaderboard()
    assert list(board["--epochs"]) == ["3", "1"] and list(board["epochs"]) == [3.0, 0.217]
    html = leaderboard_html(sweep)
    header = html.split("</tr>", 1)[0]
    assert ">--epochs<" in header and ">--lr<" in header and ">epochs<" in header
    stopped = [row for row in html.split("llm-sweep-row")[1:] if ">stopped<" in row][0]
    assert ">1<" in stopped and "0.217" in stopped       # the grid's value and the metric, side by side


def test_the_title_counts_what_each_point_came_to():
    sweep = finished_sweep("lr=1e-4,2e-4,3e-4,4e-4", [
        {"status": "stopped", "val_accuracy": 0.5}, {"status": "skipped"}, {"status": "skipped"},
        {"status": "failed", "message": "out of memory"}])
    html = leaderboard_html(sweep)
    assert "1 stopped · 2 skipped · 1 failed of 4 points" in html and "4/4" not in html


def test_sweeps_rank_by_validation_and_a_test_metric_says_why_not():
    row = {"point": 1, "--lr": "1e-4", "test_accuracy": 0.9, "val_accuracy": 0.8, "train_loss": 0.1}
    assert sweep_mod._pick_metric(row) == "val_accuracy"
    by_val = finished_sweep("lr=1e-4,2e-4", [{"status": "ok", "val_accuracy": 0.7, "test_accuracy": 0.9}] * 2)
    assert by_val.metric == "val_accuracy" and "llm-magics-note" not in leaderboard_html(by_val)
    by_test = finished_sweep("lr=1e-4,2e-4", [{"status": "ok", "test_accuracy": 0.9}] * 2, metric="test_accuracy")
    note = leaderboard_html(by_test).split("llm-magics-note", 1)[1].split("</div>", 1)[0]
    assert "test set biases" in note and "val_accuracy" in note


def plotted(monkeypatch, sweep, metric=None, plot=sweep_plot):
    """The axes `plot` drew, caught before they become a PNG."""
    from llm_magics.runs import figures
    caught = []
    original = figures.to_png

    def catch(fig):
        caught.append(fig.axes[0])
        return original(fig)
    monkeypatch.setattr(figures, "to_png", catch)
    png = plot(sweep, metric)
    assert png and png.startswith(b"\x89PNG")
    return caught[0]


def test_the_sweep_plot_is_the_metric_against_the_swept_option(monkeypatch):
    sweep = finished_sweep("lr=1e-4,1e-3,1e-2 epochs=1,2", [
        {"status": "ok", "val_accuracy": v} for v in (0.5, 0.6, 0.7, 0.8, 0.65, 0.6)])
    ax = plotted(monkeypatch, sweep)
    assert ax.get_xlabel() == "--lr" and ax.get_ylabel() == "val_accuracy" and ax.get_xscale() == "log"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["--epochs 1", "--epochs 2"]
    assert len(ax.get_lines()) == 2 and sorted(ax.get_lines()[0].get_xdata()) == [1e-4, 1e-3, 1e-2]
    categorical = finished_sweep("target=q|k,v", [{"status": "ok", "val_accuracy": 0.5},
                                                  {"status": "stopped", "val_accuracy": 0.4}])
    ax = plotted(monkeypatch, categorical)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q", "k,v"] and "stopped early" in ax.get_title()
    assert sweep_plot(finished_sweep("lr=1e-4", [{"status": "failed"}])) is None   # nothing to draw yet


def test_three_swept_options_get_parallel_coordinates(monkeypatch):
    scores = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9]
    sweep = finished_sweep("lr=1e-4,1e-2 r=4,8 target=q|k,v", [{"status": "ok", "val_accuracy": v} for v in scores])
    ax = plotted(monkeypatch, sweep, plot=parallel_plot)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["--lr", "--r", "--target", "val_accuracy"]
    points = [line for line in ax.get_lines() if line.get_marker() == "o"]   # the axes are lines without markers
    assert len(points) == 8 and all(len(line.get_ydata()) == 4 for line in points)
    worst, best = points[0], points[-1]
    assert list(worst.get_ydata()) == [0, 0, 0, 0] and list(best.get_ydata()) == [1, 1, 1, 1]
    assert worst.get_color() != best.get_color()                                # coloured by the metric
    labels = {t.get_text() for t in ax.texts}
    assert {"q", "k,v", "4", "8", "0.5", "0.9"} <= labels
    assert "parallel coordinates" in plot_html(sweep)
    two = finished_sweep("lr=1e-4,1e-2 r=4,8", [{"status": "ok", "val_accuracy": v} for v in scores[:4]])
    assert parallel_plot(two) is None and "parallel coordinates" not in plot_html(two)


def test_every_points_loss_curve_overlaid_labelled_by_its_settings(monkeypatch):
    sweep = finished_sweep("lr=1e-4,1e-3 epochs=1", [{"status": "ok", "val_accuracy": 0.6},
                                                      {"status": "stopped", "val_accuracy": 0.7}])
    assert curves_plot(sweep) is None                      # no point has a curve yet
    sweep.curves = {1: [(1, 0.9), (2, 0.7), (3, 0.6)], 2: [(1, 0.8), (2, 0.5)]}
    ax = plotted(monkeypatch, sweep, plot=lambda s, _m: curves_plot(s))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["--lr 1e-4", "--lr 1e-3"]
    assert [list(line.get_ydata()) for line in ax.get_lines()] == [[0.9, 0.7, 0.6], [0.8, 0.5]]
    assert ax.get_lines()[1].get_linestyle() == "--" and "stopped early" in ax.get_title()
    assert "training loss of every point" in plot_html(sweep)


def test_a_real_sweep_keeps_each_points_loss_curve_for_its_views(monkeypatch, shell, tiny_bert, separable):
    from llm_magics.tune.view import SweepView
    shell.user_ns["df"] = separable[0]
    assert shell.run_cell(f"%llm sweep finetune --model {tiny_bert} --data df --train all --batch-size 8 "
                          "--dtype float32 --epochs 1 --grid \"lr=1e-3,1e-2\" --out s").success
    sweep = shell.user_ns["s"]
    assert sweep.wait(120) and [row["status"] for row in sweep.rows] == ["ok", "ok"]
    assert all(len(sweep.curves[p]) >= 2 for p in (1, 2))
    assert all(isinstance(step, int) and loss == loss for p in (1, 2) for step, loss in sweep.curves[p])
    view = SweepView(sweep)
    view.update(sweep)
    assert "training loss of every point" in view.snapshot_html() and "training loss of every point" in view.plot.value
    assert "training loss of every point" in sweep._repr_html_()


def test_compare_shows_the_options_that_differ_apart_from_metrics():
    import pandas as pd

    from llm_magics.runs.compare import compare
    frame = pd.DataFrame([
        dict(run_id="a", method="finetune", model="m", status="ok", trainable_params=10, wall_s=1.0,
             val_accuracy=0.7, epochs=0.5),
        dict(run_id="b", method="finetune", model="m", status="ok", trainable_params=10, wall_s=2.0,
             val_accuracy=0.8, epochs=2.0)])
    options = {"a": {"epochs": 1, "lr": 0.001, "seed": 0, "out": "x"},
               "b": {"epochs": 2, "lr": 0.01, "seed": 0, "out": "y"}}
    result = compare(frame, "val_accuracy", options)
    assert result.options == ["--epochs", "--lr"]
    assert list(result.table.columns[:3]) == ["run_id", "--epochs", "--lr"]
    assert list(result.table["--epochs"]) == ["2", "1"]
    assert "overflow-x:auto" in result._repr_html_()
    assert compare(frame, "val_accuracy").options == []      # without recorded options, no option columns


def record(store, run_id, options, **metrics):
    store.record(dict(run_id=run_id, method="probe", model="minilm", status="ok", options=options,
                      metrics=metrics, trainable_params=0, wall_s=1.0))


def test_llm_compare_two_runs_with_diff(shell, store):
    record(store, "probe-000000000001", {"C": 0.1, "pooling": "mean", "seed": 0}, test_accuracy=0.7)
    record(store, "probe-000000000002", {"C": 1.0, "pooling": "mean", "seed": 0}, test_accuracy=0.8)
    record(store, "probe-000000000003", {"C": 5.0, "pooling": "cls", "seed": 1}, test_accuracy=0.6)
    result = shell.run_line_magic("llm", "compare probe-000000000001 probe-000000000002 --diff")
    assert set(result.table["run_id"]) == {"probe-000000000001", "probe-000000000002"}
    assert result.options == ["--C"] and list(result.table["--C"]) == ["1.0", "0.1"]
    plain = shell.run_line_magic("llm", "compare probe-000000000001 probe-000000000003")
    assert plain.options == [] and len(plain.table) == 2
    with pytest.raises(UsageError, match="no recorded run 'probe-nope'"):
        shell.run_line_magic("llm", "compare probe-000000000001 probe-nope --diff")


def test_recent_runs_show_the_options_that_differ(shell, store):
    from llm_magics.tune.panel import TunePanel
    record(store, "probe-000000000001", {"C": 0.1, "epochs": 1, "out": "a"}, val_accuracy=0.7, epochs=0.4)
    record(store, "probe-000000000002", {"C": 1.0, "epochs": 3, "out": "b"}, val_accuracy=0.8, epochs=3.0)
    panel = TunePanel(shell.user_ns, "probe")
    panel.refresh_runs()
    header = panel.runs_table.value.split("</tr>", 1)[0]
    assert ">--C<" in header and ">--epochs<" in header and ">--out<" not in header
    assert "overflow-x:auto" in panel.runs_table.value


def test_llm_ends_with_next_steps_and_help_lists_every_command(shell):
    from llm_magics.magics import LLM_COMMANDS
    overview = shell.run_line_magic("llm", "")
    tail = repr(overview).split("next:", 1)[1]
    assert all(f"%llm {word}" in tail for word in ("tune", "sweep", "compare", "help"))
    assert "%llm help" in overview._repr_html_()
    listing = repr(shell.run_line_magic("llm", "help")).splitlines()
    assert len(listing) == 1 + len(LLM_COMMANDS)
    assert any(line.split()[:2] == ["%llm", "sweep"] and "leaderboard" in line for line in listing)


def bare_colours(markup: str) -> list[str]:
    """Colours in style rules that are not JupyterLab theme variables (with their fallback)."""
    import re

    from llm_magics.progress.theme import BEST_ROW
    markup = re.sub(r"var\(--jp-[\w-]+, ?#[0-9a-fA-F]{3,6}\)", "var()", markup.replace(BEST_ROW, ""))
    markup = re.sub(r"<span style='color:#[0-9a-fA-F]{3,6}'>■</span>", "", markup)   # a chart's swatch: its line's
    return re.findall(r"(?:color|background|border|stroke)[\w-]*\s*:[^;'\"]*#[0-9a-fA-F]{3,6}", markup)


def test_every_view_takes_its_colours_from_the_theme(shell, store):
    import pandas as pd

    from llm_magics.method import Result
    from llm_magics.progress import Progress
    from llm_magics.progress.html import render
    from llm_magics.runs.compare import compare
    from llm_magics.tune.panel import TunePanel
    sweep = finished_sweep("lr=1e-4,2e-4,3e-4", [{"status": "ok", "val_accuracy": 0.7},
                                                 {"status": "failed", "message": "bad"}, {"status": "stopped"}])
    progress = Progress([], run_id="r1", title="train")
    progress.start(total=10, unit="steps")
    for i in range(10):
        progress.advance(1, loss=1.0 / (i + 1))
        progress.eval(val_accuracy=i / 10)
    progress.log("out of memory: splitting batches")
    panel = TunePanel(shell.user_ns, "probe")
    panel.metric.value = "test_accuracy"
    record(store, "probe-000000000001", {"C": 0.1}, test_accuracy=0.7)
    panel.refresh_runs()
    frame = pd.DataFrame([dict(run_id="a", method="probe", model="m", status="ok", trainable_params=10,
                               wall_s=1.0, test_accuracy=0.7)])
    result = Result("probe", {"test_accuracy": 0.7}, notes=["a note"], artifacts={"run_dir": "/tmp/x"},
                    tables={"t": frame})
    views = {"leaderboard": leaderboard_html(sweep), "live view": render(progress.state),
             "magic line": panel.line.value, "sweep line": panel.sweep_line_view.value,
             "metric note": panel.metric_note.value, "recent runs": panel.runs_table.value,
             "compare": compare(frame)._repr_html_(), "overview": shell.run_line_magic("llm", "")._repr_html_(),
             "result": result._repr_html_()}
    assert "var(--jp-layout-color2, #f6f6f6)" in views["magic line"] and "test set" in views["metric note"]
    assert "llm-sweep-best" in views["leaderboard"]
    assert {name: bare_colours(markup) for name, markup in views.items() if bare_colours(markup)} == {}
    assert "<svg" in views["live view"] and "fill:currentColor" in views["live view"]   # axis text follows the theme
    for name in ("leaderboard", "recent runs", "compare", "overview", "result"):
        assert "overflow-x:auto" in views[name], name


def test_icl_result_reads_row_by_row_and_predicts_plain_strings(tiny_llama, demo):
    from llm_magics import api
    train, test = demo
    data = test.head(6).rename(columns={"text": "sentence"})
    demos = train.rename(columns={"text": "sentence"})
    result = api.icl(model=str(tiny_llama), dtype="float32", template="Review: {sentence}\nSentiment: {label}",
                     data=data, demos=demos, shots=2, labels=["negative", "positive"], zero_shot=False)
    html = result._repr_html_()
    per_row = html.split("<i>per row</i>", 1)[1]
    header = per_row.split("</thead>", 1)[0]
    assert all(f"<th>{c}</th>" in header for c in ("sentence", "label", "prediction", "score"))
    assert data["sentence"].iloc[0][:20] in per_row
    one_class = result.predictions["prediction"].nunique() == 1
    assert any(n.startswith("every prediction is") for n in result.notes) == one_class
    expected = result.predict(data[["sentence"]].head(2))
    assert result.predict(list(data["sentence"].head(2))) == expected          # plain strings fill {sentence}
    assert result.predict(data["sentence"].iloc[0]) == expected[:1]
    two_fields = api.icl(model=str(tiny_llama), dtype="float32", template="{sentence} / {sentence2}: {label}",
                         data=data.assign(sentence2="x"), labels=["negative", "positive"], zero_shot=False)
    with pytest.raises(UsageError, match=r"fills 2 fields \(\{sentence\}, \{sentence2\}\)"):
        two_fields.predict(["a text"])


def test_one_class_predictions_get_a_warning():
    import pandas as pd

    from llm_magics.methods.icl.result import IclResult
    same = IclResult("icl", {"test_accuracy": 0.5}, label_names=["negative", "positive"],
                     predictions=pd.DataFrame({"row": [0, 1, 2, 3], "text": list("abcd"),
                                               "prediction": ["positive"] * 4,
                                               "gold": ["positive", "negative"] * 2,
                                               "logp_negative": [-2.0] * 4, "logp_positive": [-1.0] * 4}))
    assert len(same.notes) == 1 and same.notes[0].startswith("every prediction is 'positive' (4 rows)")
    assert "every prediction is" in same._repr_html_() and "0.731" in same._repr_html_()   # softmax score
    mixed = IclResult("icl", label_names=["negative", "positive"],
                      predictions=pd.DataFrame({"row": [0, 1], "prediction": ["positive", "negative"]}))
    assert mixed.notes == []



def test_llm_compare_sweep_ranks_by_validation_and_warns_on_test(shell, store):
    for i, (c, val, test) in enumerate([(0.1, 0.6, 0.9), (1.0, 0.8, 0.7)]):
        store.record(dict(run_id=f"probe-00000000000{i}", method="probe", model="minilm", status="ok",
                          options={"C": c}, metrics={"val_accuracy": val, "test_accuracy": test},
                          trainable_params=0, wall_s=1.0, sweep_id="sweep-1"))
    ranked = shell.run_line_magic("llm", "compare --sweep sweep-1")
    assert ranked.metric == "val_accuracy" and list(ranked.table["--C"]) == ["1.0", "0.1"] and not ranked.notes
    on_test = shell.run_line_magic("llm", "compare --sweep sweep-1 --metric test_accuracy")
    assert len(on_test.notes) == 1 and "test set biases" in on_test.notes[0]
    assert not shell.run_line_magic("llm", "compare --metric test_accuracy").notes   # comparing methods: test


class Displays:
    """What IPython.display.display was given, and the display-id updates after it (as a notebook keeps them)."""

    def __init__(self, monkeypatch):
        import IPython.display
        self.shown, self.updates = [], []
        monkeypatch.setattr(IPython.display, "display", self.display)

    def display(self, obj, display_id=False, **_kwargs):
        self.shown.append(obj)
        if display_id:
            index = len(self.shown) - 1
            outer = self

            class Handle:
                def update(self, new):
                    outer.updates.append((index, new))
                    outer.shown[index] = new
            return Handle()
        return None

    def html(self) -> list[str]:
        return [getattr(o, "data", "") for o in self.shown if type(o).__name__ == "HTML"]


def test_widget_views_leave_a_snapshot_in_the_notebook(monkeypatch, shell):
    """A sweep view and the panel leave their state as HTML beside the widget (a display id keeps it current),
    so a reopened notebook shows a leaderboard, not "model not found"; beside a live view it is hidden."""
    from llm_magics.progress.widget import LIVE_CLASS, SNAPSHOT_CLASS
    from llm_magics.tune.panel import TunePanel
    from llm_magics.tune.view import SweepView
    shown = Displays(monkeypatch)
    sweep = finished_sweep("lr=1e-4,2e-4", [{"status": "ok", "val_accuracy": 0.7}, {"status": "waiting"}])
    sweep.ended = None
    view = SweepView(sweep)
    view._ipython_display_()
    assert shown.shown[0] is view.widget and LIVE_CLASS in view.widget._dom_classes
    assert SNAPSHOT_CLASS in shown.html()[0] and "0 done" not in shown.html()[0]
    sweep.rows[1].update(status="ok", val_accuracy=0.9, run_id="lora-000000000002")
    sweep.ended = 2.0
    view.update(sweep)                                  # the sweep's last update is sent at once
    snapshot = shown.html()[0]
    assert "2 done of 2 points" in snapshot and "llm-sweep-best" in snapshot and "<img" in snapshot
    assert f".jp-OutputArea:has(.{LIVE_CLASS}) .{SNAPSHOT_CLASS}{{display:none}}" in snapshot
    assert ".jp-OutputArea-output.jupyter-widgets)" in snapshot   # the widget's error line is hidden beside it

    panel = TunePanel(shell.user_ns, "probe")
    panel._ipython_display_()
    assert "nothing run from this panel yet" in shown.html()[-1]
    panel.ran_line, panel.handle = "%probe --data df --out result", object()
    panel.status.value = "<span>stopped</span> <code>probe-1</code>"
    panel.snapshot.refresh(now=True)
    assert "%probe --data df --out result" in shown.html()[-1] and "probe-1" in shown.html()[-1]


def test_a_bg_runs_stop_button_leaves_no_widget_behind(monkeypatch):
    """The Stop button of a --bg run is replaced by empty HTML when the run ends: no closed widget stays in the
    notebook to read "Error displaying widget" after a restart."""
    from llm_magics.progress import Progress
    from llm_magics.progress.widget import WidgetSink
    shown = Displays(monkeypatch)
    progress = Progress([], run_id="r1", title="train")
    sink = WidgetSink(progress, interval=0)
    progress.sinks.append(sink)
    sink.open(progress.state)                           # as make_progress opens it
    progress.start(total=2, unit="steps")
    assert any(o is sink.button for o in shown.shown)
    progress.advance(2)
    progress.end("ok")
    assert not any(type(o).__name__ == "Button" for o in shown.shown)
    assert [getattr(o, "data", None) for o in shown.shown].count("") == 1
