"""The panel's Try tab: a trained Result on text typed in, and the line that exports it.

A classifier shows its prediction and every label's probability; a causal LM (--task sft) its
generation. Export runs `%lora merge NAME` (an adapter) or `%llm export RUN_ID PATH` (any recorded
training run) and shows that line first: the same line typed in a cell does the same.
"""
from __future__ import annotations

import html
from typing import Any

from ..progress.theme import CODE_BACKGROUND, ERROR, MUTED, OK


def tryable(value: Any) -> bool:
    """A Result that can answer text: it predicts (classifiers) or generates (causal LMs)."""
    from ..method import Result
    return isinstance(value, Result) and (callable(getattr(value, "predict", None))
                                          or callable(getattr(value, "generate", None)))


def generates(result) -> bool:
    return getattr(result, "task", None) == "sft" and callable(getattr(result, "generate", None))


def answer_html(result, text: str) -> str:
    """The Result's answer to `text`: the generation, or the prediction with each label's probability."""
    if generates(result):
        out = result.generate([text])
        generated = out[0] if isinstance(out, (list, tuple)) else out
        return (f"<div class='llm-magics-answer'><b>generation</b><pre style='white-space:pre-wrap;padding:4px;"
                f"background:{CODE_BACKGROUND}'>{html.escape(str(generated))}</pre></div>")
    label = result.predict([text])[0]
    rows = ""
    proba = getattr(result, "predict_proba", None)
    if callable(proba):
        scores = proba([text]).iloc[0].sort_values(ascending=False)
        rows = "".join(
            f"<tr><td style='padding:0 8px'>{html.escape(str(name))}</td><td style='padding:0 8px'>{p:.3f}</td>"
            f"<td><div style='width:{max(1, int(p * 200))}px;height:10px;background:{OK}'></div></td></tr>"
            for name, p in scores.items())
    return (f"<div class='llm-magics-answer'><b>prediction</b> <span class='llm-magics-prediction'>"
            f"{html.escape(str(label))}</span><table>{rows}</table></div>")


def export_line(result, name: str) -> str:
    """What Export runs for this Result: merge an adapter, else export the recorded run as a job."""
    adapter = getattr(result, "adapter", None)
    if getattr(result, "method", None) == "lora" and adapter:
        return f"%lora merge {adapter}"
    return f"%llm export {result.run_id} {name}-job"


class TryTab:
    def __init__(self, namespace: dict, style: dict):
        import ipywidgets as widgets
        self.namespace = namespace
        self.result = widgets.Dropdown(description="Result", style=style, options=[])
        self.text = widgets.Textarea(description="text", style=style, placeholder="type a text to try the Result on",
                                     layout=widgets.Layout(width="640px", height="70px"))
        self.try_button = widgets.Button(description="Try", button_style="success", icon="play",
                                         tooltip="the Result's prediction (or generation) for the text")
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="merge an adapter, or write the run as a job: the line is shown")
        self.answer = widgets.HTML()
        self.export_view = widgets.HTML()
        self.try_button.on_click(lambda _b: self.run())
        self.export_button.on_click(lambda _b: self.export())
        self.result.observe(lambda _c: self._show_export_line(), "value")
        self.widget = widgets.VBox([
            widgets.HTML(f"<div style='color:{MUTED}'>A trained Result (a variable of the notebook) on a text "
                         "of your own.</div>"),
            self.result, self.text, widgets.HBox([self.try_button, self.export_button]), self.answer,
            self.export_view])

    def refresh(self, prefer: str | None = None) -> None:
        """List the notebook's Results that can answer text (`prefer` first chosen, e.g. the last run's)."""
        names = sorted(n for n, v in list(self.namespace.items()) if not n.startswith("_") and tryable(v))
        keep = prefer if prefer in names else (self.result.value if self.result.value in names else None)
        self.result.options = names
        self.result.value = keep or (names[-1] if names else None)
        self._show_export_line()

    def chosen(self):
        return self.namespace.get(self.result.value) if self.result.value else None

    def run(self) -> None:
        result = self.chosen()
        if result is None or not self.text.value.strip():
            self.answer.value = _error("pick a Result and type a text")
            return
        try:
            self.answer.value = answer_html(result, self.text.value.strip())
        except Exception as exc:  # noqa: BLE001 - shown in the tab (a released model, a wrong kind)
            self.answer.value = _error(f"{type(exc).__name__}: {exc}")

    def _show_export_line(self) -> None:
        result = self.chosen()
        self.export_view.value = "" if result is None else _line_html(export_line(result, self.result.value),
                                                                      "runs")

    def export(self) -> None:
        """Run the export line as a cell would, and say what it did."""
        result = self.chosen()
        if result is None:
            self.export_view.value = _error("pick a Result first")
            return
        line = export_line(result, self.result.value)
        from IPython import get_ipython
        shell = get_ipython()
        if shell is None:
            self.export_view.value = _line_html(line, "needs a notebook to run")
            return
        name, _, rest = line[1:].partition(" ")
        try:
            shell.run_line_magic(name, rest)
        except Exception as exc:  # noqa: BLE001 - a UsageError's line, shown under the line that ran
            self.export_view.value = _line_html(line, "ran") + _error(str(exc))
        else:
            self.export_view.value = _line_html(line, "ran") + f"<span style='color:{OK}'>done</span>"


def _line_html(line: str, verb: str) -> str:
    return (f"<div style='color:{MUTED};font-size:11px'>Export {verb}:</div><pre class='llm-magics-export-line' "
            f"style='margin:2px 0;padding:4px;background:{CODE_BACKGROUND}'>{html.escape(line)}</pre>")


def _error(message: str) -> str:
    return f"<span class='llm-magics-error' style='color:{ERROR}'>{html.escape(message)}</span>"
