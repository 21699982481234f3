"""`%llm tune`: a panel that runs any registered method from a form generated from its options.

Tabs: Run (method, command, the method's options grouped and checked as they are
typed, the live magic line, Run / Stop, the live view), Sweep (a grid or a
seeded random search over the form's options, with its leaderboard), Recent
runs (the run store, filtered; a picked run fills the form again), Try (a
trained Result on typed text; Export) and Ladder (`%llm ladder` from its own
fields, data and test starting as the Run tab's; the live ladder table and Stop).

A run from the panel *is* its magic line: the line shown is parsed as the
magic parses it and run in the background; its Result is bound to the name
given next to the Run button.
"""
from __future__ import annotations

import html
import threading
from typing import Any

from .. import options as opts
from ..errors import UsageError
from ..progress.theme import BORDER, CODE_BACKGROUND, ERROR, FAINT, MUTED, OK, RUNNING, WARN, scroll_box, \
    status_colour
from ..runs.compare import PREFERRED_METRICS, ranked_on_test_note
from . import form
from . import sweep as sweep_mod
from ..progress.widget import Snapshot
from .ladder_tab import LadderTab
from .try_tab import TryTab
from .view import SweepView, attach

WIDE = "460px"
SKIP_NAMES = {"In", "Out", "exit", "quit", "get_ipython"}


def data_variables(namespace: dict) -> list[str]:
    """The notebook's DataFrames, lists and Datasets, by variable name."""
    out = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in SKIP_NAMES:
            continue
        module = type(value).__module__ or ""
        if type(value).__name__ == "DataFrame" and module.startswith("pandas"):
            out.append(name)
        elif module.startswith("datasets") and type(value).__name__ in ("Dataset", "DatasetDict"):
            out.append(name)
        elif isinstance(value, list) and value and isinstance(value[0], (str, dict)):
            out.append(name)
    return sorted(out)


def columns_of(ref: str, namespace: dict) -> list[str]:
    """The columns of a data reference (a variable's, or a small file's header)."""
    value = namespace.get(ref) if ref and ref.isidentifier() else None
    try:
        if value is None and ref:
            from pathlib import Path
            path = Path(ref).expanduser()
            if path.is_file() and path.suffix in (".csv", ".tsv", ".jsonl", ".parquet"):
                from ..data import load_frame
                return [str(c) for c in load_frame(str(path), namespace).columns]
            return []
        if hasattr(value, "columns") and not callable(value.columns):
            return [str(c) for c in value.columns]
        if hasattr(value, "column_names"):
            names = value.column_names
            if isinstance(names, dict):   # a DatasetDict
                names = next(iter(names.values()), [])
            return list(names)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return list(value[0])
    except Exception:  # noqa: BLE001 - a list of columns is a convenience, never an error
        return []
    return []


def model_aliases() -> list[str]:
    from ..models import EMBEDDED
    return list(EMBEDDED)


class TunePanel:
    """The widget-driven way to run and sweep methods. Display it (or return it from a cell)."""

    def __init__(self, namespace: dict | None = None, method: str | None = None, registry=None):
        import ipywidgets as widgets
        from ..registry import registry as default_registry
        self.w = widgets
        self.namespace = namespace if namespace is not None else {}
        self.registry = registry or default_registry()
        self.fields: dict[str, tuple[form.Field, Any, Any]] = {}
        self.handle = None
        self.ran_line = self.ran_sweep_line = ""   # what the last run and sweep ran (the snapshot shows them)
        self.sweep = None
        self.sweep_view = None
        self.cls = None
        style = {"description_width": "130px"}
        self.style = style

        names = self.registry.names()
        labels = [(n if e.origin == "llm-magics" else f"{n} ({e.origin})", n)
                  for n, e in self.registry.entries.items()]
        start = method if method in names else ("probe" if "probe" in names else (names[0] if names else None))
        if method and method not in names:
            self.registry.get(method)   # the UsageError with its "did you mean"
        self.method = widgets.Dropdown(options=labels, value=start, description="method", style=style)
        self.command = widgets.Dropdown(options=[("(main)", "")], value="", description="command", style=style)
        self.summary = widgets.HTML()
        self.form_box = widgets.VBox()
        self.cell = widgets.Textarea(description="cell body", style=style, placeholder="the cell's body",
                                     layout=widgets.Layout(width="640px", height="90px"))
        self.out = widgets.Text(value="", description="Result →", style=style,
                                tooltip="bind the Result to this variable when the run ends")
        self._out_auto, self._setting_out = True, False   # the name follows the method until the user types one
        self.preview = widgets.HTML()
        self.rows: dict[str, Any] = {}
        self.line = widgets.HTML()
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play",
                                         tooltip="run the line above in the background")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True,
                                          tooltip="end the run cleanly after the current step")
        self.error = widgets.HTML()
        self.status = widgets.HTML()
        self.live = widgets.HTML()
        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self.cell.observe(lambda _c: self.refresh_line(), "value")
        self.out.observe(self._out_changed, "value")
        self.out_msg = widgets.HTML()
        self.refresh_vars = widgets.Button(description="variables", icon="refresh",
                                           tooltip="list the notebook's tables again (after making new ones)",
                                           layout=widgets.Layout(width="110px"))
        self.refresh_vars.on_click(lambda _b: self.refresh_variables())
        run_tab = widgets.VBox([
            widgets.HBox([self.method, self.command, self.refresh_vars]), self.summary, self.form_box, self.cell,
            widgets.HBox([self.out, self.out_msg]), self.line,
            widgets.HBox([self.run_button, self.stop_button, self.status]), self.error, self.live])

        # -- sweep tab --
        self.grid = widgets.Text(description="grid", style=style, layout=widgets.Layout(width="640px"),
                                 placeholder='e.g. lr=1e-4,5e-4 r=4,8  (name=v1,v2 for each swept option)',
                                 continuous_update=True)
        self.random = widgets.Text(description="random points", style=style,
                                   placeholder="(empty: the whole grid)", continuous_update=True)
        self.sweep_seed = widgets.Text(value="0", description="sweep seed", style=style, continuous_update=True)
        self.metric = widgets.Combobox(description="metric", style=style, ensure_option=False,
                                       options=list(PREFERRED_METRICS), placeholder="val_accuracy")
        self.metric_note = widgets.HTML()
        self.sweep_line_view = widgets.HTML()
        self.sweep_button = widgets.Button(description="Run sweep", button_style="success", icon="play")
        self.sweep_button.on_click(lambda _b: self.run_sweep())
        self.sweep_error = widgets.HTML()
        self.sweep_area = widgets.VBox()
        for w in (self.grid, self.random, self.sweep_seed, self.metric):
            w.observe(lambda _c: self.refresh_line(), "value")
        sweep_tab = widgets.VBox([
            widgets.HTML(f"<div style='color:{MUTED}'>The Run tab's options are the base of every point; "
                         "the grid's values replace them point by point.</div>"),
            self.grid, self.random, self.sweep_seed, self.metric, self.metric_note, self.sweep_line_view, self.sweep_button,
            self.sweep_error, self.sweep_area])

        # -- recent runs tab --
        self.filter_method = widgets.Dropdown(description="method", style=style)
        self.filter_model = widgets.Dropdown(description="model", style=style)
        self.filter_status = widgets.Dropdown(description="status", style=style)
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.runs = widgets.Select(description="runs", style=style, rows=10,
                                   layout=widgets.Layout(width="760px"))
        self.fill_button = widgets.Button(description="Fill the form", icon="edit",
                                          tooltip="open this run's method and options in the Run tab")
        self.recent_msg = widgets.HTML()
        self.runs_table = widgets.HTML()
        self.refresh_button.on_click(lambda _b: self.refresh_runs())
        self.fill_button.on_click(lambda _b: self.fill(self.runs.value) if self.runs.value else None)
        for w in (self.filter_method, self.filter_model, self.filter_status):
            w.observe(lambda _c: None if self._filling else self.refresh_runs(reload=False), "value")
        recent_tab = widgets.VBox([widgets.HBox([self.filter_method, self.filter_model]),
                                   widgets.HBox([self.filter_status, self.refresh_button]),
                                   self.runs, self.fill_button, self.recent_msg, self.runs_table])

        # -- try tab --
        self.try_tab = TryTab(self.namespace, style)

        # -- ladder tab --
        self.ladder_tab = LadderTab(self.namespace, style, variables=lambda: data_variables(self.namespace),
                                    on_update=lambda lad: self.snapshot.refresh(now=lad.finished))

        self.tabs = widgets.Tab(children=[run_tab, sweep_tab, recent_tab, self.try_tab.widget, self.ladder_tab.widget],
                                titles=("Run", "Sweep", "Recent runs", "Try", "Ladder"))
        self.tabs.observe(self._tab_changed, "selected_index")
        self.widget = widgets.VBox([widgets.HTML("<b>llm-magics · tune</b>"), self.tabs])
        self.widget.add_class("llm-magics-tune")
        self._frame = None
        self._options: dict[str, dict] = {}   # run id → its recorded options (the Recent runs tab's columns)
        self._filling = False
        self.snapshot = Snapshot(self.snapshot_html)
        for shown in (self.live, self.status, self.error):   # the run view, as the saved notebook keeps it
            shown.observe(lambda _c: self.snapshot.refresh(), "value")
        self.method.observe(lambda _c: self._method_changed(), "value")
        self.command.observe(lambda _c: self._build_form(), "value")
        self._method_changed()

    # ---- the form -------------------------------------------------------------------------
    def _method_changed(self) -> None:
        self.error.value = ""
        name = self.method.value
        try:
            self.cls = self.registry.load(name) if name else None
        except UsageError as exc:
            self.cls = None
            self.error.value = _error_html(str(exc))
        cls = self.cls
        commands = [("(main)", "")]
        if cls is not None:
            commands += [(f"{word}: {cmd.summary}" if cmd.summary else word, word)
                         for word, cmd in cls.commands.items()]
        self.command.unobserve_all("value")
        self.command.options = commands
        self.command.value = ""
        self.command.observe(lambda _c: self._build_form(), "value")
        self.command.layout.display = "" if len(commands) > 1 else "none"
        self.summary.value = (f"<div style='color:{MUTED};max-width:760px'>{html.escape(cls.summary)}</div>"
                              if cls is not None and cls.summary else "")
        self._build_form()

    @property
    def word(self) -> str | None:
        return self.command.value or None

    @property
    def options_cls(self):
        return self.cls.command(self.word).options if self.cls is not None else None

    def _build_form(self) -> None:
        w = self.w
        carried = {name: widget.value for name, (field, widget, _) in self.fields.items()
                   if field.role in ("data", "column", "model") and widget.value
                   and widget.value != field.default_text}   # what the user chose, not a default
        self.fields = {}
        self.rows = {}
        self.preview.value = ""
        cls = self.cls
        if cls is None:
            self.form_box.children = []
            self.refresh_line()
            return
        groups: dict[str, tuple[list, list]] = {g: ([], []) for g in form.GROUPS}
        for field in form.fields(self.options_cls):
            if cls.cell_option and field.name == cls.cell_option and not self.word:
                continue   # the cell body has its own box
            widget = self._widget(field)
            msg = w.HTML(layout=w.Layout(margin="0 0 0 8px"))
            self.fields[field.name] = (field, widget, msg)
            widget.observe(lambda change, f=field: self._changed(f), "value")
            parts = [w.HBox([widget, msg]), w.HTML(help_html(field.spec))]
            if field.role == "data" and field.name == "data":
                parts.append(self.preview)
            row = w.VBox(parts)
            row.add_class("llm-magics-field")
            self.rows[field.name] = row
            groups[field.group][1 if field.folded else 0].append(row)
        sections = []
        for group in form.GROUPS:
            shown, folded = groups[group]
            if not shown and not folded:
                continue
            parts = [w.HTML(f"<div style='margin-top:6px;border-bottom:1px solid {BORDER}'>"
                            f"<b>{form.GROUP_TITLES[group]}</b></div>")] + shown
            if folded:
                more = w.Accordion(children=[w.VBox(folded)], titles=(f"more {group} options ({len(folded)})",),
                                   selected_index=None)
                parts.append(more)
            sections.append(w.VBox(parts))
        self.form_box.children = sections
        self.cell.layout.display = "" if cls.cell_option and not self.word else "none"
        self.out.layout.display = "" if self._has_out() else "none"
        self.set_values({k: v for k, v in carried.items() if k in self.fields})   # data and model carry over
        self._show_applying()
        self._name_result()
        self.refresh_line()

    def _has_out(self) -> bool:
        return self.options_cls is not None and any(s.name == "out" for s in opts.specs(self.options_cls))

    def _widget(self, field: form.Field):
        w, spec = self.w, field.spec
        common = dict(description=spec.metavar if spec.positional else spec.flag, style=self.style,
                      tooltip=opts.describe(spec), layout=w.Layout(width=WIDE))
        default = field.default_text
        if field.role == "bool":
            return w.Checkbox(value=bool(spec.default), indent=True, **common)
        if field.role == "choice":
            options = ([("(default)", "")] if spec.default is None else []) + [(str(c), str(c)) for c in spec.choices]
            return w.Dropdown(options=options, value=default if spec.default is not None else "", **common)
        if field.role == "data":
            return w.Combobox(options=data_variables(self.namespace), ensure_option=False,
                              placeholder="a variable, a file path or a dataset name", value=default, **common)
        if field.role == "column":
            return w.Combobox(options=[], ensure_option=False, placeholder="(inferred)", value=default, **common)
        if field.role == "model":
            return w.Combobox(options=model_aliases(), ensure_option=False, value=default,
                              placeholder="(the default model) an alias, a folder or a hub id", **common)
        placeholder = "required" if spec.required else ("(default)" if not default else "")
        return w.Text(value=default, placeholder=placeholder, continuous_update=True, **common)

    def _changed(self, field: form.Field) -> None:
        _, widget, msg = self.fields[field.name]
        problem = None
        if field.role in ("int", "float", "list", "text", "choice"):
            problem = form.check(field.spec, widget.value)
            if problem and not field.spec.required and str(widget.value).strip() == "":
                problem = None
        msg.value = _error_html(problem) if problem else ""
        if field.role == "data":
            self._refresh_columns()
            if field.name == "data":
                self._refresh_preview()
        if field.role == "column":
            self._refresh_preview()
        self._show_applying()
        self.refresh_line()
        self._recheck_error()

    def _show_applying(self) -> None:
        """Show the fields that apply to the form's values, hide the rest (their `applies` declaration)."""
        if self.options_cls is None:
            return
        values = {name: widget.value for name, (_, widget, _) in self.fields.items()}
        shown = form.applying(self.options_cls, values)
        for name, row in self.rows.items():
            row.layout.display = "" if name in shown else "none"

    def _recheck_error(self) -> None:
        """A Run error goes once the line it was about is fixed (the line parses as the magic parses it)."""
        if not self.error.value or (self.handle is not None and not self.handle.done):
            return
        try:
            form.parse(self.magic_line(), self.registry)
        except UsageError as exc:
            self.error.value = _error_html(str(exc))
        else:
            self.error.value = ""

    def _refresh_preview(self) -> None:
        if "data" not in self.fields:
            return
        label = self.fields["label"][1].value if "label" in self.fields else ""
        self.preview.value = data_preview(str(self.fields["data"][1].value or "").strip(), self.namespace,
                                          str(label or "").strip() or None)

    # ---- the Result's name -------------------------------------------------------------------
    def _name_result(self) -> None:
        """Result → follows the method (r_lora), numbered past a name that holds a Result (r_lora_2), until the
        user types a name of their own."""
        if self.cls is None or not self._out_auto:
            return
        self._setting_out = True
        try:
            self.out.value = free_result_name(f"r_{self.cls.name}", self.namespace)
        finally:
            self._setting_out = False

    def refresh_variables(self) -> None:
        """The data fields list the notebook's tables as they are now (and their columns)."""
        names = data_variables(self.namespace)
        for field, widget, _ in self.fields.values():
            if field.role == "data":
                widget.options = names
        self._refresh_columns()

    def _refresh_columns(self) -> None:
        data_values = [self.fields[n][1].value for n in ("data", "demos", "test") if n in self.fields]
        columns: list[str] = []
        for ref in data_values:
            for column in columns_of(str(ref or "").strip(), self.namespace):
                if column not in columns:
                    columns.append(column)
        for field, widget, _ in self.fields.values():
            if field.role == "column":
                widget.options = columns

    def values(self) -> dict[str, Any]:
        """The form's values: the fields shown (an option that does not apply is left out of the line)."""
        out = {name: widget.value for name, (_, widget, _) in self.fields.items()
               if self.rows.get(name) is None or self.rows[name].layout.display != "none"}
        if self._has_out():
            out["out"] = self.out.value.strip()
        return out

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            if name == "out":
                self.out.value = str(value or "")
            elif name in self.fields:
                field, widget, _ = self.fields[name]
                if field.role == "choice" and value not in [v for _, v in widget.options]:
                    continue
                widget.value = value

    def magic_line(self) -> str:
        if self.cls is None:
            return ""
        cell = self.cell.value if self.cls.cell_option and not self.word else None
        return form.magic_line(self.cls.name, self.word, self.options_cls, self.values(), cell)

    def sweep_line(self) -> str:
        if self.cls is None:
            return ""
        values = {k: v for k, v in self.values().items() if k != "out"}
        tokens = ([self.word] if self.word else []) + form.line_tokens(self.options_cls, values)
        own = ["--grid", self.grid.value.strip()]
        if self.metric.value.strip():
            own += ["--metric", self.metric.value.strip()]
        if self.random.value.strip():
            own += ["--random", self.random.value.strip()]
            if self.sweep_seed.value.strip() not in ("", "0"):
                own += ["--sweep-seed", self.sweep_seed.value.strip()]
        return f"%llm sweep {self.cls.name} {form.join(tokens + own)}".replace("  ", " ")

    def refresh_line(self) -> None:
        line = self.magic_line()
        self.line.value = (f"<div style='color:{MUTED};font-size:11px'>the magic this runs (copy it into a cell "
                           f"to run it without the panel):</div><pre class='llm-magics-line' style='margin:2px 0;"
                           f"padding:4px;background:{CODE_BACKGROUND};white-space:pre-wrap'>{html.escape(line)}</pre>")
        if hasattr(self, "sweep_line_view"):
            self.sweep_line_text = self.sweep_line()
            self.sweep_line_view.value = (f"<pre class='llm-magics-sweep-line' style='margin:2px 0;padding:4px;"
                                          f"background:{CODE_BACKGROUND};white-space:pre-wrap'>"
                                          f"{html.escape(self.sweep_line_text)}</pre>")
            note = ranked_on_test_note(self.metric.value.strip())
            self.metric_note.value = f"<div style='color:{WARN}'>{html.escape(note)}</div>" if note else ""

    def _out_changed(self, _change=None) -> None:
        if not self._setting_out:
            self._out_auto = not self.out.value.strip()
        problem = form.check(_OUT_SPEC, self.out.value) if self.out.value.strip() else None
        self.out_msg.value = _error_html(problem) if problem else ""
        self.refresh_line()

    # ---- running -----------------------------------------------------------------------------
    def run(self):
        """Run the shown line in the background; a user mistake is shown, and nothing starts."""
        from ..runner import execute
        self.error.value = ""
        if self.handle is not None and not self.handle.done:
            self.error.value = _error_html("a run is going on: stop it or wait for it to end")
            return None
        self._keep_results()
        line = self.magic_line()
        try:
            name, word, options = form.parse(line, self.registry)
        except UsageError as exc:
            self.error.value = _error_html(str(exc))
            return None
        out = self.out.value.strip() if self.out.layout.display != "none" else ""
        try:
            handle = execute(name, word, options, namespace=self.namespace, progress_mode="none", background=True)
        except UsageError as exc:
            self.error.value = _error_html(str(exc))
            return None
        self.handle = handle
        self.ran_line = line
        attach(handle.progress, self.live)
        self.run_button.disabled = True
        self.stop_button.disabled = False
        self.status.value = f"<span style='color:{RUNNING}'>running <code>{html.escape(handle.run_id)}</code></span>"
        threading.Thread(target=self._watch, args=(handle, out), daemon=True,
                         name=f"llm-magics-tune-{handle.run_id}").start()
        return handle

    def _keep_results(self) -> None:
        """A Result already bound to the chosen name is never silently replaced: the next free number is taken
        (r_lora → r_lora_2), and the line shown says so."""
        name = self.out.value.strip()
        if self.out.layout.display == "none" or not name or not holds_result(self.namespace.get(name)):
            return
        self._setting_out = True
        try:
            self.out.value = free_result_name(name, self.namespace)
        finally:
            self._setting_out = False
        self.out_msg.value = (f"<span style='color:{MUTED}'>{html.escape(name)} holds an earlier Result: this one "
                              f"goes to {html.escape(self.out.value)}</span>")

    def _watch(self, handle, out: str) -> None:
        handle.wait()
        try:
            result = handle.result()
        except UsageError as exc:
            self.error.value = _error_html(str(exc))
            self.status.value = f"<span style='color:{ERROR}'>failed</span>"
        except Exception as exc:  # noqa: BLE001 - shown next to the panel; the run recorded nothing
            self.error.value = _error_html(f"{type(exc).__name__}: {exc}")
            self.status.value = f"<span style='color:{ERROR}'>failed</span>"
        else:
            if out:
                self.namespace[out] = result
                self.try_tab.refresh(prefer=out)
                if self._out_auto:
                    self._name_result()   # the next run gets the next number
            status = getattr(result, "status", "ok")
            bound = f" · Result in <code>{html.escape(out)}</code>" if out else ""
            self.status.value = (f"<span style='color:{status_colour(status)}'>{status}</span> "
                                 f"<code>{html.escape(handle.run_id)}</code>{bound}")
        finally:
            self.run_button.disabled = False
            self.stop_button.disabled = True
            self.snapshot.refresh(now=True)

    def stop(self) -> None:
        if self.handle is not None and not self.handle.done:
            self.handle.stop()
            self.stop_button.disabled = True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the panel's run (or sweep, or ladder) to end: for scripts and tests."""
        import time
        deadline = None if timeout is None else time.time() + timeout
        while self.run_button.disabled or (self.sweep is not None and not self.sweep.done) or self.ladder_tab.running:
            if deadline is not None and time.time() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ---- sweeps --------------------------------------------------------------------------
    def run_sweep(self):
        self.sweep_error.value = ""
        if self.sweep is not None and not self.sweep.done:
            self.sweep_error.value = _error_html("a sweep is going on: stop it or wait for it to end")
            return None
        line = self.sweep_line()
        try:
            sweep, _ = sweep_mod.from_line(line[len("%llm sweep "):], self.namespace, progress_mode="none")
        except UsageError as exc:
            self.sweep_error.value = _error_html(str(exc))
            return None
        self.sweep = sweep
        self.ran_sweep_line = line
        self.sweep_view = SweepView(sweep)
        sweep.on_update.append(lambda s: self.snapshot.refresh(now=s.finished))
        self.sweep_area.children = [self.sweep_view.widget]
        return sweep.start()

    # ---- recent runs -------------------------------------------------------------------------
    def _tab_changed(self, change) -> None:
        if change["new"] == 2:
            self.refresh_runs()
        elif change["new"] == 3:
            self.try_tab.refresh()
        elif change["new"] == 4:
            self.ladder_tab.prefill(self.values())

    def refresh_runs(self, reload: bool = True) -> None:
        from ..runs import RunStore
        from ..settings import current
        if reload or self._frame is None:
            store = RunStore(current().runs_path)
            self._frame = store.frame(limit=500)
            self._options = {r["run_id"]: r.get("options") or {} for r in store.list(limit=500)}
        frame = self._frame
        for widget, column in ((self.filter_method, "method"), (self.filter_model, "model"),
                               (self.filter_status, "status")):
            values = {str(v) for v in frame.get(column, []) if v == v and v}
            if column == "method":
                values |= set(self.registry.names())
            values = ["(any)"] + sorted(values)
            if list(widget.options) != values:
                keep = widget.value
                self._filling = True
                try:
                    widget.options = values
                    widget.value = keep if keep in values else "(any)"
                finally:
                    self._filling = False
        shown = frame
        for widget, column in ((self.filter_method, "method"), (self.filter_model, "model"),
                               (self.filter_status, "status")):
            if widget.value not in (None, "(any)") and column in shown:
                shown = shown[shown[column].astype(str) == widget.value]
        from ..runs.compare import pick_metric
        metric = pick_metric(shown, None) if len(shown) else None
        options = []
        for _, row in shown.iterrows():
            score = row.get(metric) if metric else None
            score_text = f" · {metric} {score:.4g}" if isinstance(score, float) and score == score else ""
            label = (f"{row['run_id']} · {row['method']} · {str(row.get('model') or '')[-40:]} · "
                     f"{row.get('status', '')}{score_text} · {row.get('created', '')}")
            options.append((label, row["run_id"]))
        self.runs.options = options
        self.runs_table.value = _runs_table(shown, metric, self._options)
        self.recent_msg.value = f"<span style='color:{MUTED}'>{len(options)} of {len(frame)} recorded runs</span>"

    def fill(self, run_id: str) -> None:
        """Open a recorded run's method and options in the Run tab ("run again with changes")."""
        from ..runs import RunStore
        from ..settings import current
        record = RunStore(current().runs_path).get(run_id)
        if record is None:
            self.recent_msg.value = _error_html(f"no recorded run {run_id!r}")
            return
        if record["method"] not in self.registry.names():
            self.recent_msg.value = _error_html(f"method {record['method']!r} is not installed")
            return
        self.method.value = record["method"]
        recorded = record.get("options") or {}
        if self.cls is not None and self.cls.commands:
            keys = set(recorded)
            for word, cmd in self.cls.commands.items():
                if cmd.records_run and {s.name for s in opts.specs(cmd.options)} == keys:
                    self.command.value = word
                    break
        values = form.values_from_record(self.options_cls, recorded)
        if self.cls is not None and self.cls.cell_option and self.cls.cell_option in values:
            self.cell.value = values.pop(self.cls.cell_option)
        self.set_values(values)
        self.tabs.selected_index = 0
        self.recent_msg.value = f"<span style='color:{OK}'>form filled from <code>{html.escape(run_id)}</code></span>"

    # ---- display ------------------------------------------------------------------------------
    def snapshot_html(self) -> str:
        """What the saved notebook keeps of the panel: its last run (the line, status, live view) and sweep."""
        parts = ["<b>llm-magics · tune</b>"]
        if self.handle is not None:
            parts.append(f"<pre style='margin:2px 0;padding:4px;background:{CODE_BACKGROUND};white-space:pre-wrap'>"
                         f"{html.escape(self.ran_line)}</pre>{self.status.value}{self.error.value}{self.live.value}")
        elif self.error.value:
            parts.append(self.error.value)
        if self.sweep_view is not None:
            parts.append(f"<pre style='margin:2px 0;padding:4px;background:{CODE_BACKGROUND};white-space:pre-wrap'>"
                         f"{html.escape(self.ran_sweep_line)}</pre>{self.sweep_view.snapshot_html()}")
        if self.ladder_tab.view is not None:
            parts.append(self.ladder_tab.snapshot_html())
        if len(parts) == 1:
            parts.append(f"<div style='color:{MUTED}'>nothing run from this panel yet</div>")
        return "".join(parts)

    def _ipython_display_(self) -> None:
        self.snapshot.display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<TunePanel {self.method.value}: {self.magic_line()!r}>"


from ..common_options import RunOptions  # noqa: E402

_OUT_SPEC = next(s for s in opts.specs(RunOptions) if s.name == "out")


def _runs_table(frame, metric: str | None, options: dict[str, dict] | None = None, limit: int = 30) -> str:
    """The filtered runs as a compact table: one line per run, newest first; a column for each option
    that differs between them (--lr, --epochs: a sweep's settings), apart from the metrics."""
    if frame is None or not len(frame):
        return ""
    from ..progress.events import format_metric
    from ..runs.compare import with_options
    total = len(frame)
    frame, option_columns = with_options(frame.head(limit), options or {})
    columns = ["run_id"] + option_columns + ["method", "model", "status"] \
        + ([metric] if metric and metric in frame else []) \
        + [c for c in ("wall_s", "sweep_id", "created") if c in frame]
    head = "".join(f"<th style='padding:1px 8px;text-align:left'>{html.escape(c)}</th>" for c in columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None or value != value:
                text = ""
            elif column == "wall_s":
                text = f"{value:,.1f}"
            elif column == "model":
                text = str(value)[-40:]
            elif column in option_columns:
                text = str(value)
            else:
                text = format_metric(value)
            cells.append(f"<td style='padding:1px 8px;white-space:nowrap'>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<div style='color:{FAINT}'>… and {total - limit} more</div>" if total > limit else ""
    table = f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    return f"<div class='llm-magics-runs' style='font-size:12px'>{scroll_box(table)}{more}</div>"


def help_html(spec: opts.Spec) -> str:
    """The line under a field: its help's first clause, the whole help (and when it applies) on hover."""
    return (f"<div class='llm-magics-help' title='{html.escape(opts.describe(spec), quote=True)}' "
            f"style='margin:-2px 0 4px 136px;font-size:11px;line-height:1.3;color:{MUTED};max-width:560px'>"
            f"{html.escape(form.short_help(spec))}</div>")


def holds_result(value) -> bool:
    from ..method import Result
    return isinstance(value, Result)


def free_result_name(name: str, namespace: dict) -> str:
    """`name` if it holds no Result, else the first of name_2, name_3, … that holds none."""
    if not holds_result(namespace.get(name)):
        return name
    stem = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() and "_" in name else name
    number = 2
    while holds_result(namespace.get(f"{stem}_{number}")):
        number += 1
    return f"{stem}_{number}"


PREVIEW_ROWS = 3


def data_preview(ref: str, namespace: dict, label: str | None = None) -> str:
    """Under the data field: how many rows, the first few, and the label counts (the --label column, or a
    column named label)."""
    frame = _frame_of(ref, namespace)
    if frame is None or not len(frame.columns):
        return ""
    label = label if label in frame.columns else ("label" if "label" in frame.columns else None)
    head = frame.head(PREVIEW_ROWS).astype(str).apply(lambda c: c.str.slice(0, 60))
    cells = "".join(f"<th style='padding:0 6px;text-align:left'>{html.escape(str(c))}</th>" for c in head.columns)
    rows = "".join("<tr>" + "".join(f"<td style='padding:0 6px;white-space:nowrap'>{html.escape(v)}</td>"
                                    for v in row) + "</tr>" for row in head.itertuples(index=False))
    counts = ""
    if label:
        shown = frame[label].astype(str).value_counts().head(8)
        counts = (f"<div>{html.escape(label)}: " + " · ".join(f"{html.escape(k)} {v:,}" for k, v in shown.items())
                  + (" · …" if frame[label].nunique() > len(shown) else "") + "</div>")
    return (f"<div class='llm-magics-preview' style='margin:0 0 6px 136px;font-size:11px;color:{MUTED}'>"
            f"<div>{len(frame):,} rows · {len(frame.columns)} columns</div>"
            f"{scroll_box(f'<table><tr>{cells}</tr>{rows}</table>', 'max-width:600px')}{counts}</div>")


def _frame_of(ref: str, namespace: dict):
    """A DataFrame of a data reference, when it is one cheaply: a variable, or a small local file."""
    if not ref:
        return None
    import pandas as pd
    value = namespace.get(ref) if ref.isidentifier() else None
    try:
        if isinstance(value, pd.DataFrame):
            return value
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return pd.DataFrame(value[:1000])
        if value is not None and hasattr(value, "to_pandas") and hasattr(value, "column_names") \
                and not isinstance(value.column_names, dict):
            return value.select(range(min(len(value), 1000))).to_pandas()
        if value is None:
            from pathlib import Path
            path = Path(ref).expanduser()
            if path.is_file() and path.suffix in (".csv", ".tsv", ".jsonl", ".parquet") \
                    and path.stat().st_size < 50_000_000:
                from ..data import load_frame
                return load_frame(str(path), namespace)
    except Exception:  # noqa: BLE001 - a preview is a convenience, never an error
        return None
    return None


def _error_html(message: str) -> str:
    return f"<span class='llm-magics-error' style='color:{ERROR}'>{html.escape(message)}</span>"
