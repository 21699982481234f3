"""Every method as a plain Python function: no IPython needed.

    from llm_magics import api
    result = api.probe(model="minilm", data=train_df, test=test_df)
    api.index.build(name="wiki", source="docs/")      # a method's subcommand
    api.compare()

Each method's function is made from its options declaration, so its keyword
arguments, defaults, help and validation are the magic's.
"""
from __future__ import annotations

import functools

from . import options as opts
from .engine.device import device_info
from .models import EMBEDDED, free as _free_models
from .registry import registry
from .runner import run_method as run
from .runs import RunStore
from .runs.compare import compare_recorded
from .runs.paired import PairedRuns, compare_paired as _compare_paired
from .settings import current as settings

__all__ = ["run", "sweep", "ladder", "compare", "compare_paired", "runs", "free", "methods", "device", "models"]


def _function(method: str, command: str | None = None):
    cls = registry().load(method)
    spec = cls.command(command)

    def call(**kwargs):
        return run(method, command, **kwargs)

    call.__name__ = method if command is None else f"{method}_{command}"
    call.__qualname__ = call.__name__
    call.__signature__ = opts.signature(spec.options)
    call.__doc__ = opts.help_text(spec.options, method if command is None else f"{method} {command}",
                                  spec.summary)
    for word in (cls.commands if command is None else {}):
        setattr(call, word, _function(method, word))
    return call


@functools.cache
def _method_function(name: str):
    return _function(name)


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    if name in registry().entries:
        return _method_function(name)
    raise AttributeError(f"llm_magics.api has no method {name!r}; installed: {', '.join(registry().names())}")


def __dir__():
    return sorted(set(globals()) | set(registry().names()))


def sweep(method: str, grid: str, /, command: str | None = None, *, metric: str | None = None,
          random: int | None = None, sweep_seed: int = 0, wait: bool = False, **kwargs):
    """`%llm sweep` from Python: `grid` as in the magic ("lr=1e-4,5e-4 r=4,8"), the method's options as
    keyword arguments (objects such as DataFrames too). Returns the started Sweep (`wait=True`: ended)."""
    from .errors import UsageError, did_you_mean
    from .tune import form
    from .tune.sweep import from_line
    cls = registry().load(method)
    if command is not None and command not in cls.commands:
        raise UsageError(f"{method} has no command {command!r}" + did_you_mean(command, cls.commands))
    by_name = {s.name: s for s in opts.specs(cls.command(command).options)}
    tokens, namespace = ([command] if command else []), {}
    for name, value in kwargs.items():
        if name not in by_name:
            raise UsageError(f"unknown argument {name!r}" + did_you_mean(name, by_name))
        spec = by_name[name]
        if spec.kind is object and not isinstance(value, str):   # a DataFrame, a list: by a name
            namespace[name] = value
            value = name
        tokens += form.flag_tokens(spec, value) if not spec.positional else [str(value)]
    tokens += ["--grid", grid, "--sweep-seed", str(sweep_seed)]
    tokens += (["--metric", metric] if metric else []) + (["--random", str(random)] if random else [])
    run_sweep, _ = from_line([method] + tokens, namespace)
    run_sweep.start()
    if wait:
        run_sweep.wait()
    return run_sweep


def compare(metric: str | None = None, method: str | None = None, limit: int | None = None,
            sweep: str | None = None, runs: list[str] | None = None, diff: bool = False, ladder: str | None = None):
    """Recorded runs side by side: a table and a plot of the metric against trainable parameters.
    `sweep` keeps the runs of one `%llm sweep` (its id) and shows its swept options as columns (ranked by
    a validation metric unless `metric` says otherwise); `runs` keeps the named runs; `diff` adds a column
    for each option that differs between the runs shown. `ladder`: a recorded `%llm ladder` (its id) redrawn."""
    if ladder:
        from .tune.ladder import load_ladder
        return load_ladder(ladder)
    return compare_recorded(metric, method, limit, sweep, runs, diff)


def compare_paired(a, b, metric: str = "correct", names: tuple[str, str] | None = None) -> PairedRuns:
    """Run A against run B on the test rows both scored (each a run id or a Result): the difference in
    `metric` (a per-item column: "correct" for accuracy) with its paired bootstrap 95 % interval, the exact
    McNemar test, the counts, and one sentence. `names`: how to call A and B in it (default: run ids)."""
    return _compare_paired(a, b, metric, names)


def ladder(data, test, *, wait: bool = True, **kwargs):
    """`%llm ladder` from Python: every rung of adaptation on `data`, scored on `test` (DataFrames, files or dataset
    names), with the magic's options as keyword arguments (budget="20m", seeds=3, rungs="probe; lora --r 4", …).
    Returns the Ladder, started (`wait=True`: ended); `.result()` is its table, frontier and recommendation."""
    from .errors import UsageError, did_you_mean
    from .tune import form
    from .tune.ladder import LadderOptions, from_line
    by_name = {s.name: s for s in opts.specs(LadderOptions)}
    tokens, namespace = [], {}
    for name, value in {"data": data, "test": test, **kwargs}.items():
        if name not in by_name or name == "out":
            raise UsageError(f"unknown argument {name!r}" + did_you_mean(name, by_name))
        if by_name[name].kind is object and not isinstance(value, str):   # a DataFrame: by a name
            namespace[f"ladder_{name}"] = value
            value = f"ladder_{name}"
        tokens += form.flag_tokens(by_name[name], value)
    run_ladder = from_line(tokens, namespace).start()
    if wait:
        run_ladder.wait()
    return run_ladder


def runs(limit: int | None = 20, method: str | None = None):
    """Recorded runs, newest first, as a DataFrame."""
    return RunStore(settings().runs_path).frame(limit=limit, method=method)


def free() -> int:
    """Drop cached models (and the ones Results hold) and release accelerator memory."""
    return _free_models()


def methods() -> list[dict[str, str]]:
    """Every registered method with its origin and import status (importing each to find out)."""
    from .errors import UsageError
    for entry in registry().entries.values():
        try:
            entry.load()
        except UsageError:
            pass  # kept on the entry as its error, shown in the listing
    rows = [{"name": e.name, "origin": e.origin, "status": e.status, "error": e.error or ""}
            for e in registry().entries.values()]
    # A name two distributions declare: the one not used is listed too, as a conflict.
    rows += [{"name": e.name, "origin": e.origin, "status": "conflict", "error": e.error}
             for e in registry().shadowed]
    return sorted(rows, key=lambda row: row["name"])


def device() -> dict:
    from .engine.device import pick_device
    return device_info(pick_device(settings().device))


def models() -> list[dict[str, str]]:
    from .models import installed
    return [{"alias": alias, "package": e.package, "installed": installed(alias), "about": e.description}
            for alias, e in EMBEDDED.items()]
