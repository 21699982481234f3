"""The panel's Ladder tab: `%llm ladder` from a form, with the same live table and Stop as the magic.

The fields are `LadderOptions`' own (data and test start as the Run tab's); the line shown is the
`%llm ladder` line a cell would run, and Run ladder parses and runs exactly that line
(`ladder.from_line`), shown in `ladder.LadderView`: the current run's progress, the table filling in
rung by rung, one Stop for the whole ladder.
"""
from __future__ import annotations

import html
import threading
from typing import Any

from .. import options as opts
from ..errors import UsageError
from ..progress.theme import CODE_BACKGROUND, ERROR, MUTED
from . import form
from . import ladder as ladder_mod

SHOWN = ("data", "test", "rungs", "seeds", "budget", "model_encoder", "model_causal", "out")
DATA_FIELDS = ("data", "test")


class LadderTab:
    def __init__(self, namespace: dict, style: dict, variables=lambda: [], on_update=None):
        import ipywidgets as widgets
        self.namespace, self.variables = namespace, variables
        self.on_update = on_update   # told after each run of the ladder (the panel's notebook snapshot)
        self.ladder: ladder_mod.Ladder | None = None
        self.view: ladder_mod.LadderView | None = None
        self.ran_line = ""
        self._shown_end = threading.Event()
        specs = {s.name: s for s in opts.specs(ladder_mod.LadderOptions)}
        self.specs = {name: specs[name] for name in SHOWN}
        self.fields: dict[str, Any] = {}
        for name, spec in self.specs.items():
            tip = form.short_help(spec)
            common = dict(description=name.replace("_", " "), style=style, tooltip=tip, continuous_update=True)
            if name in DATA_FIELDS:
                widget = widgets.Combobox(options=variables(), ensure_option=False, placeholder="a DataFrame", **common)
            elif name == "rungs":
                defaults = "; ".join(line for _, line in ladder_mod.default_rungs())
                widget = widgets.Textarea(placeholder=defaults, layout=widgets.Layout(width="640px", height="60px"),
                                          **common)
            else:
                widget = widgets.Text(value=form.default_text(spec) if name != "out" else "lad", **common)
            widget.observe(lambda _c: self.refresh_line(), "value")
            self.fields[name] = widget
        self.line = widgets.HTML()
        self.run_button = widgets.Button(description="Run ladder", button_style="success", icon="play",
                                         tooltip="run the line above: every rung, seed by seed, in the background")
        self.run_button.on_click(lambda _b: self.run())
        self.error = widgets.HTML()
        self.area = widgets.VBox()
        self.widget = widgets.VBox([
            widgets.HTML(f"<div style='color:{MUTED}'>Every rung of adaptation on your data, each scored on the same "
                         "test rows: score ± interval, cost, the Pareto frontier and a recommendation.</div>"),
            *self.fields.values(), self.line, self.run_button, self.error, self.area])
        self.refresh_line()

    def prefill(self, values: dict[str, Any]) -> None:
        """Empty data / test fields take the Run tab's; the variables offered are the notebook's now."""
        for name in DATA_FIELDS:
            widget = self.fields[name]
            widget.options = self.variables()
            if not str(widget.value).strip() and str(values.get(name) or "").strip():
                widget.value = str(values[name])

    def values(self) -> dict[str, Any]:
        return {name: widget.value for name, widget in self.fields.items()}

    def tokens(self) -> list[str]:
        return form.line_tokens(ladder_mod.LadderOptions, self.values())

    def magic_line(self) -> str:
        return f"%llm ladder {form.join(self.tokens())}".rstrip()

    def refresh_line(self) -> None:
        self.line.value = (f"<pre class='llm-magics-ladder-line' style='margin:2px 0;padding:4px;"
                           f"background:{CODE_BACKGROUND};white-space:pre-wrap'>{html.escape(self.magic_line())}</pre>")

    @property
    def running(self) -> bool:
        """A ladder started here and not yet shown as ended (its table drawn, its Stop greyed)."""
        return self.ladder is not None and not self._shown_end.is_set()

    def run(self) -> ladder_mod.Ladder | None:
        """Start the shown line's ladder; a mistake is one line under the button, and nothing starts."""
        self.error.value = ""
        if self.running:
            self.error.value = _error("a ladder is going on: stop it or wait for it to end")
            return None
        try:
            ladder = ladder_mod.from_line(self.tokens(), self.namespace, progress_mode="none")
        except UsageError as exc:
            self.error.value = _error(str(exc))
            return None
        self.ladder, self.ran_line = ladder, self.magic_line()
        self.view = ladder_mod.LadderView(ladder)
        self.area.children = [self.view.widget]
        if self.on_update is not None:
            ladder.on_update.append(self.on_update)
        self._shown_end = threading.Event()   # set once the views have drawn the ended ladder
        ladder.on_update.append(lambda lad: self._shown_end.set() if lad.finished else None)
        if ladder.options.out:
            self.namespace[ladder.options.out] = ladder
        return ladder.start()

    def stop(self) -> None:
        if self.view is not None and self.running:
            self.view.stop_button.click()

    def snapshot_html(self) -> str:
        if self.view is None:
            return ""
        return (f"<pre style='margin:2px 0;padding:4px;background:{CODE_BACKGROUND};white-space:pre-wrap'>"
                f"{html.escape(self.ran_line)}</pre>{self.view.snapshot_html()}")


def _error(message: str) -> str:
    return f"<span class='llm-magics-error' style='color:{ERROR}'>{html.escape(message)}</span>"
