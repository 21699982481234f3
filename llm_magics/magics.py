"""IPython magics, built from the registry. Thin: parse, run, display.

`%llm` is the umbrella; every registered method gets its own magic (`%probe`,
`%%icl`, ...). A method's module is imported on first use, or when its help
is asked for (`%probe?`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from IPython.core.magic import Magics, line_magic, magics_class
from traitlets import Enum, Unicode, observe

from . import options as opts
from . import settings as settings_mod
from .errors import UsageError, did_you_mean
from .registry import asks_help, parse_magic_line, registry, rediscover


@dataclass
class CompareOptions:
    metric: str | None = opts.option(None, "metric to compare (default: test_accuracy when recorded; with --sweep, "
                                           "val_accuracy: settings are chosen on validation)")
    method: str | None = opts.option(None, "only runs of this method")
    limit: int | None = opts.option(None, "only the newest N runs", check=opts.positive)
    sweep: str | None = opts.option(None, "only the runs of this sweep (its id, from %llm sweep), its swept options "
                                          "as columns", metavar="ID")
    ladder: str | None = opts.option(None, "redraw a recorded %llm ladder (its id): table, frontier, recommendation",
                                     metavar="ID")
    run: str | None = opts.option(None, "only this run (and the next RUN_ID)", positional=True, metavar="RUN_ID")
    other_run: str | None = opts.option(None, "a second run to set beside the first", positional=True,
                                        metavar="RUN_ID")
    diff: bool = opts.option(False, "a column for each option that differs between the runs shown")
    paired: bool = opts.option(False, "RUN_ID RUN_ID (or variables holding Results): the difference on their shared "
                                      "test rows, with its paired bootstrap interval and McNemar's test")


@dataclass
class RunsOptions:
    limit: int = opts.option(20, "how many of the newest runs", check=opts.positive)
    method: str | None = opts.option(None, "only runs of this method")
    repair: bool = opts.option(False, "rebuild a damaged run store from the rows it can read, and import the "
                                      "records kept aside while it could not be written")


LLM_COMMANDS = {
    "": "overview: methods, models, device, recent runs",
    "methods": "registered methods, where each comes from, and whether it imported",
    "models": "model aliases and where each resolves",
    "device": "the device, dtype and free memory runs will use",
    "runs": "recorded runs (--limit N, --method NAME; --repair mends a damaged store)",
    "compare": "recorded runs side by side: table and plot (--metric, --method, --limit, --sweep ID; "
               "RUN_ID RUN_ID --diff: the options that differ; A B --paired: a paired test on shared test rows)",
    "free": "drop cached models and release GPU memory",
    "export": "RUN_ID PATH: a recorded training run as a job (train.py, data, README) for a shell or a cluster",
    "reload": "discover methods again (after pip-installing a plugin)",
    "tune": "a panel to run any method from a form, sweep its options and rerun recorded runs ([METHOD])",
    "sweep": "METHOD <options> --grid \"lr=1e-4,5e-4 r=4,8\" [--metric M] [--random N]: runs with a leaderboard",
    "ladder": "--data D --test T [--budget 20m] [--seeds 3] [--rungs \"probe; lora --r 4\"]: every rung of "
              "adaptation on your data with intervals, cost, a Pareto frontier and a recommendation",
    "help": "this list: every %llm command in one line",
}
NEXT_STEPS = ("tune", "sweep", "compare", "help")   # where the overview points a new user


@magics_class
class LLMMagics(Magics):
    """Settings users keep, settable with `%config LLMMagics.<name> = value`."""

    default_model = Unicode("minilm", help="model used when a magic gets no --model").tag(config=True)
    device = Unicode("auto", help="auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps").tag(config=True)
    cache_dir = Unicode("", help="folder for converted models, feature caches and run artifacts").tag(config=True)
    runs_db = Unicode("", help="SQLite file of the run store (default: <cache_dir>/runs.sqlite)").tag(config=True)
    progress = Enum(["auto", "widget", "html", "text", "none"], "auto",
                    help="how runs show progress").tag(config=True)

    def __init__(self, shell=None, **kwargs):
        current = settings_mod.current()
        self._loading = True  # settings arriving at %load_ext are checked at the first run (no torch import now)
        super().__init__(shell=shell, **kwargs)
        # Start from the environment's settings; later %config changes flow back into them.
        self.default_model = current.default_model
        self.device = current.device
        self.cache_dir = str(current.cache_dir)
        self.runs_db = str(current.runs_db or "")
        self.progress = current.progress
        self._loading = False

    @observe("default_model", "device", "cache_dir", "runs_db", "progress")
    def _push(self, change):
        current = settings_mod.current()
        value = change["new"]
        if change["name"] == "cache_dir":
            current.cache_dir = Path(value).expanduser() if value else settings_mod.Settings().cache_dir
        elif change["name"] == "runs_db":
            current.runs_db = Path(value).expanduser() if value else None
        elif change["name"] == "device" and value not in ("", "auto"):
            if not getattr(self, "_loading", True):
                from .engine.device import pick_device
                pick_device(value)  # a %config device that does not exist is refused now, not at the next run
            current.device = value
        else:
            setattr(current, change["name"], value or getattr(settings_mod.Settings(), change["name"]))

    def _compare_paired(self, names: list[str], metric: str | None):
        """`%llm compare A B --paired`: A and B are run ids or variables holding Results."""
        from . import api
        from .method import Result
        if len(names) != 2:
            raise UsageError("%llm compare --paired takes two runs: %llm compare A B --paired (run ids or variables "
                             "holding Results)")
        namespace = self.shell.user_ns if self.shell else {}
        runs = [namespace[n] if isinstance(namespace.get(n), Result) else n for n in names]
        return api.compare_paired(*runs, metric=metric or "correct", names=tuple(names))

    @line_magic
    def llm(self, line: str = ""):
        """%llm [methods|models|device|runs|compare|tune|sweep|export|free|reload|help]: the umbrella."""
        from . import api
        from .overview import Commands, Overview
        tokens = opts.split_line(line)
        word, rest = (tokens[0], tokens[1:]) if tokens else ("", [])
        if word not in LLM_COMMANDS:
            raise UsageError(f"%llm: unknown command {word!r}" + did_you_mean(word, [w for w in LLM_COMMANDS if w]))
        if word == "compare":
            o = opts.parse_line(CompareOptions, rest, "llm compare")
            if o.ladder:
                return api.compare(ladder=o.ladder)
            ids = [r for r in (o.run, o.other_run) if r]
            if o.paired:
                return self._compare_paired(ids, o.metric)
            return api.compare(o.metric, o.method, o.limit, sweep=o.sweep, runs=ids or None, diff=o.diff)
        if word == "ladder":
            from .tune.ladder import ladder_magic
            return ladder_magic(self.shell, rest)
        if word in ("tune", "sweep"):
            from .tune.magic import sweep_magic, tune_magic
            return (tune_magic if word == "tune" else sweep_magic)(self.shell, rest)
        if word == "export":   # llm_magics/jobs/export.py
            from .jobs.export import ExportOptions, export
            o = opts.parse_line(ExportOptions, rest, "llm export")
            folder = export(o.run_id, o.path, self.shell.user_ns if self.shell else {})
            print(f"exported run {o.run_id} to {folder}: see {folder / 'README.md'}")
            return None
        if word == "runs":
            o = opts.parse_line(RunsOptions, rest, "llm runs")
            if o.repair:
                from .runs import RunStore
                print(RunStore(settings_mod.current().runs_path).repair())
            return Overview(runs=api.runs(o.limit, o.method), sections=("runs",))
        if rest:
            raise UsageError(f"%llm {word} takes no arguments, got {' '.join(rest)!r}")
        if word == "help":
            return Commands(LLM_COMMANDS)
        if word == "free":
            dropped = api.free()
            accelerator = api.device()["device"].split(":")[0]
            print(f"released {dropped} cached model(s) and holders of one (Results, loaded adapters)"
                  + (f"; emptied the {accelerator.upper()} cache" if accelerator in ("cuda", "mps") else ""))
            return None
        if word == "reload":
            register_methods(self.shell, rediscover())
            return Overview(methods=api.methods(), sections=("methods",))
        sections = {"": ("methods", "models", "device", "runs"), "methods": ("methods",),
                    "models": ("models",), "device": ("device",)}[word]
        return Overview(methods=api.methods(), models=api.models() if "models" in sections else None,
                        device=api.device() if "device" in sections else None,
                        runs=api.runs(10) if "runs" in sections else None, sections=sections,
                        next_steps={w: LLM_COMMANDS[w] for w in NEXT_STEPS} if word == "" else {})


class MethodMagic:
    """The magic of one method: a callable IPython registers, with lazy help."""

    def __init__(self, name: str, shell):
        self.name = name
        self.shell = shell
        self.__name__ = name

    def getdoc(self) -> str:  # IPython's `%name?` asks for this
        try:
            return registry().load(self.name).help()
        except UsageError as exc:
            return str(exc)

    @property
    def __doc__(self):  # noqa: D105 - help() and inspect read __doc__
        return self.getdoc()

    @property
    def __wrapped__(self):
        """The method's class: `%name?` names the file that defines it (a plugin's own)."""
        try:
            return registry().load(self.name)
        except UsageError:
            raise AttributeError("__wrapped__") from None

    def __call__(self, line: str = "", cell: str | None = None):
        return run_magic(self.name, line, cell, self.shell)


def run_magic(name: str, line: str, cell: str | None, shell):
    tokens = opts.split_line(line)
    if asks_help(tokens):
        print(registry().load(name).help())
        return None
    cls, word, options = parse_magic_line(name, tokens, cell)
    from .runner import execute  # the engine (torch) loads on first use, not at %load_ext
    result = execute(name, word, options, namespace=shell.user_ns if shell else {}, method_cls=cls)
    out = getattr(options, "out", None)
    if out:
        shell.user_ns[out] = result
        return None
    return result


def register_methods(shell, reg=None) -> None:
    reg = reg or registry()
    manager = shell.magics_manager
    for name in reg.names():
        manager.register_function(MethodMagic(name, shell), magic_kind="line_cell", magic_name=name)


def load(shell) -> LLMMagics:
    unload(shell)  # a reload replaces the previous instance instead of stacking a second one
    magics = LLMMagics(shell=shell)  # Magics.__init__ joins shell.configurables: `%config LLMMagics` sets it
    shell.register_magics(magics)
    register_methods(shell)
    return magics


def unload(shell) -> None:
    manager = shell.magics_manager
    for name in registry().names() + ["llm"]:
        for kind in ("line", "cell"):
            manager.magics[kind].pop(name, None)
    manager.registry.pop("LLMMagics", None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, LLMMagics)]
