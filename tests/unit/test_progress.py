"""Progress sinks: throttled, in place, never a line per batch."""
import io

from llm_magics.progress import HtmlSink, Progress, TextSink
from llm_magics.progress.html import render


def test_text_sink_prints_a_handful_of_lines_for_thousands_of_steps():
    stream = io.StringIO()
    progress = Progress([TextSink(stream=stream)], run_id="r1", title="extract")
    progress.start(total=5000)
    for _ in range(5000):
        progress.advance(1)
    progress.eval(val_accuracy=0.9)
    progress.end("ok", test_accuracy=0.8)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # start, eval, end
    assert "5000/5000 rows" in lines[-1] and "test_accuracy=0.8" in lines[-1] and "ok" in lines[-1]


class RecordingHtml(HtmlSink):
    def __init__(self):
        super().__init__()
        self.shown = []

    def show(self, markup):
        self.shown.append(markup)


def test_html_sink_updates_in_place_and_throttles():
    sink = RecordingHtml()
    progress = Progress([sink], run_id="r2", title="train")
    progress.start(total=1000, unit="steps")  # training: the view charts the loss
    for i in range(1000):
        progress.advance(1, loss=1.0 / (i + 1))
    progress.end("ok")
    assert 2 <= len(sink.shown) <= 5
    final = sink.shown[-1]
    assert "1,000/1,000 steps" in final and "<svg" in final and "loss" in final and ">ok<" in final


def test_render_shows_eta_while_running_and_messages():
    progress = Progress([], run_id="r3", title="t")
    progress.start(total=10)
    progress.advance(5)
    progress.log("out of memory: splitting batches")
    html = render(progress.state)
    assert "ETA" in html and "out of memory" in html and "<progress" in html


def test_elapsed_counts_every_phase_and_freezes_at_the_end(monkeypatch):
    import llm_magics.progress.events as events
    clock = [100.0]
    monkeypatch.setattr(events.time, "perf_counter", lambda: clock[0])
    progress = Progress([], run_id="r4", title="probe")   # the view opens as the run begins
    clock[0] = 130.0                                      # loading the model
    progress.start(total=10)
    clock[0] = 160.0
    progress.phase("fit", total=5)
    clock[0] = 170.0
    progress.advance(5)
    assert progress.state.elapsed == 70.0 and progress.state.rate == 0.5   # rate: this phase's
    progress.end("ok")
    clock[0] = 500.0
    assert progress.state.elapsed == 70.0
    assert "1:10 elapsed" in render(progress.state)


def test_after_a_stop_the_view_says_where_it_stopped():
    progress = Progress([], run_id="r5", title="train")
    progress.start(total=300, unit="steps")
    progress.advance(3, loss=1.0)
    progress.request_stop()
    progress.request_stop()                     # a second click adds nothing
    assert progress.state.messages == ["stop requested: finishing the current step"]
    progress.end("stopped")
    html = render(progress.state)
    assert "stopped at step 3 of 300" in html and "stop requested" not in html and ">stopped<" in html


def test_chart_has_axes_shows_duplicates_and_does_not_flatten_to_zero():
    from llm_magics.progress.html import chart
    history = [(step, {"loss": 2.0 / step}) for step in range(1, 50)]
    history += [(step, {"val_accuracy": 0.5 + step / 100, "val_f1": 0.5 + step / 100, "val_loss": 0.7})
                for step in (10, 20, 30, 40)]
    svg = chart(history)
    assert svg.count("<svg") == 2                                   # losses and the other metrics apart
    assert ">step<" in svg and ">49<" in svg and ">0<" in svg       # an x axis with its label and range
    assert "stroke-dasharray" in svg and "val_f1" in svg and "(= val_accuracy, dashed)" in svg
    assert svg.count("<polyline") == 4                               # the duplicate is drawn too
    flat = chart([(s, {"kl": 0.25}) for s in (1, 2, 3)])
    assert ">0.25<" in flat and "0.25 (flat)" in flat                # its value on the axis, mid-height
    ys = {float(p.split(",")[1]) for p in flat.split("points='")[1].split("'")[0].split()}
    assert len(ys) == 1 and 16 < ys.pop() < 130 - 30                # inside the plot, not on its floor


def test_compare_formats_counts_and_plots_untrained_runs_on_a_labelled_position():
    import pandas as pd

    from llm_magics.runs.compare import compare
    frame = pd.DataFrame([
        dict(run_id="icl-0123456789ab", method="icl", model="smollm2", status="ok", trainable_params=0,
             total_params=134515008, wall_s=40.0, test_accuracy=0.77),
        dict(run_id="lora-0123456789ab", method="lora", model="minilm", status="ok", trainable_params=147456,
             total_params=22713216, wall_s=300.0, test_accuracy=0.82)])
    result = compare(frame)
    html = result._repr_html_()
    assert "22,713,216" in html and "147,456" in html and "134,515,008" in html
    assert "<td style='white-space:nowrap'>icl-0123456789ab</td>" in html
    assert "22,713,216" in repr(result)
    import sys
    compare_mod = sys.modules["llm_magics.runs.compare"]   # the module, not the function of its name
    labels, sizes = [], []
    original = compare_mod.to_png

    def capture(fig):
        ax = fig.axes[0]
        labels.extend(t.get_text() for t in ax.get_xticklabels())
        sizes.extend(float(h.get_sizes()[0]) for h in ax.get_legend().legend_handles)
        return original(fig)
    compare_mod.to_png = capture
    try:
        compare(frame)
    finally:
        compare_mod.to_png = original
    assert labels[0] == "0\n(none trained)" and "100k" in labels
    assert sizes == [40.0, 40.0]
