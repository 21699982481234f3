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
