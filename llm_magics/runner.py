"""One way to run a method, shared by the magics and the Python API.

It times the run, measures peak memory, hands the method a `RunContext`,
records the Result in the run store — and, when the user made a mistake
(UsageError) or the run failed, records nothing and removes the run's folder.
"""
from __future__ import annotations

import secrets
import shutil
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as opts
from . import settings as settings_mod
from .errors import UsageError
from .engine.device import MemoryMonitor, Stopwatch, pick_device
from .method import Method, Result
from .progress import Progress, in_kernel, make_progress
from .registry import registry
from .runs import RunStore


def new_run_id(method: str) -> str:
    """METHOD-<48 random bits>: two ids among 100,000 runs collide with odds of 2e-5, and the
    run store refuses a taken id rather than writing over the older run."""
    return f"{method}-{secrets.token_hex(6)}"


@dataclass
class RunContext:
    """What a method may use besides its options; one per run, made by the runner.

    The contract:

    - `run_id`, `method`: this run's id (also the run store's key) and the method's name.
    - `settings`: the session's settings (default model, device, cache folders).
    - `namespace`: the user's variables (the notebook's), where `--data df` is looked up.
    - `device(preference)`: the torch device to use — `preference` is the `--device`
      option ("auto"/None: the session's setting, CUDA → MPS → CPU). Picked once per
      run: the runner measures peak memory on the same device.
    - `run_dir`: this run's artifact folder, made on first use; removed if the run fails
      with a UsageError (a crashed training run keeps its resumable checkpoint).
    - `progress(title)`: the run's one live display, made on first call (later calls
      return it, retitled). The method drives it: `start(total, unit)`, `advance(n,
      **metrics)`, `eval(**metrics)`, `log(text)`, `should_stop` (Stop / kernel interrupt).
      The method ends it with `end(status, **metrics)` when it returns a Result (the
      training base does); if the method raises, the runner ends it with "error".
    - `display(obj)`, `write(text)`: show an intermediate object; stream text into the cell.
    - `background`: True for a `--bg` run (in a thread; its Stop button works).
    - `rank`, `world`, `train_loop`: where the run executes — one process (0, 1, the engine's loop), or rank
      `rank` of `world` launched workers with their loop (set by the worker). A method never asks which: the
      training base runs `train_loop`, and the launcher rebuilds the kernel's Result (`Result.restore`).

    The runner then fills the Result's run_id, options, wall time and peak memory, and
    records it in the run store (for commands that record runs).
    """
    run_id: str
    method: str
    settings: settings_mod.Settings
    namespace: dict = field(default_factory=dict)
    progress_mode: str | None = None
    rank: int = 0
    world: int = 1
    train_loop: Any = None          # None: the engine's one-process TrainLoop
    _run_dir: Path | None = None
    _progress: Progress | None = None

    @property
    def store(self) -> RunStore:
        return RunStore(self.settings.runs_path)

    @property
    def run_dir(self) -> Path:
        """This run's artifact folder, made on first use; removed if the run fails."""
        if self._run_dir is None:
            self._run_dir = self.settings.subdir("runs") / self.run_id
            self._run_dir.mkdir(parents=True, exist_ok=True)
        return self._run_dir

    background: bool = False
    sweep_id: str | None = None     # the %llm sweep this run belongs to
    parent_id: str | None = None    # the --seeds aggregate this run is one seed of
    seed_controls: tuple = ()       # the method's declaration of what --seed controls (Method.seed_controls)
    command: str | None = None      # the subcommand that runs ("dpo" of %rlhf dpo); None: the main one
    _devices: dict = field(default_factory=dict, repr=False)

    def progress(self, title: str | None = None) -> Progress:
        """The run's progress reporter, created on first use (one live display per run).

        A background run gets a Stop button (in a notebook with widgets): its
        clicks are handled while the kernel is idle, which a foreground run
        never lets it be; a foreground run stops cleanly on a kernel interrupt.
        """
        if self._progress is None:
            mode = self.progress_mode or self.settings.progress
            self._progress = make_progress(self.run_id, title or self.method, mode, stoppable=self.background)
        elif title:
            self._progress.state.title = title
        return self._progress

    def device(self, preference: str | None = None):
        """The device for `preference` (see the class docstring), picked once per run."""
        key = preference if preference not in (None, "", "auto") else self.settings.device
        if key not in self._devices:
            self._devices[key] = pick_device(key)
        return self._devices[key]

    def display(self, obj) -> None:
        """Show an intermediate object (a table of trainable parameters, a streamed answer)."""
        if in_kernel() or _in_ipython():
            from IPython.display import display
            display(obj)
        else:
            print(repr(obj) if not isinstance(obj, str) else obj)

    def write(self, text: str) -> None:
        """Stream text into the cell (generation)."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def discard(self, error: BaseException) -> None:
        """Remove what a failed run wrote — except a checkpoint a crashed training run can resume from."""
        if self._run_dir is None:
            return
        resumable = (self._run_dir / "checkpoint-last").exists() or any(self._run_dir.glob("trl/checkpoint-*"))
        if not isinstance(error, UsageError) and resumable:   # our loop's checkpoint, or TRL's (%rlhf)
            if self._progress is not None:
                self._progress.log(f"checkpoint kept in {self._run_dir}: continue with --resume {self.run_id}")
            return
        shutil.rmtree(self._run_dir, ignore_errors=True)


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
        return get_ipython() is not None
    except ImportError:
        return False


def build_options(cls: type[Method], word: str | None, values: dict[str, Any] | str, prog: str | None = None):
    """Options from a magic line (str) or API keyword arguments (dict)."""
    command = cls.command(word)
    if isinstance(values, str):
        return opts.parse_line(command.options, values, prog or cls.name)
    return opts.from_kwargs(command.options, values)


def run_method(method: str, command: str | None = None, /, **kwargs) -> Any:
    """Run `method` (or its subcommand) with keyword options: `llm_magics.api.run`, and what a Result
    that runs another command of its method (`IndexResult.query`) calls."""
    cls = registry().load(method)
    if command is not None and command not in cls.commands:
        from .errors import did_you_mean
        raise UsageError(f"{method} has no command {command!r}" + did_you_mean(command, cls.commands))
    return execute(method, command, build_options(cls, command, kwargs), method_cls=cls)


def execute(name: str, word: str | None, options, namespace: dict | None = None,
            progress_mode: str | None = None, background: bool | None = None,
            sweep_id: str | None = None, method_cls: type[Method] | None = None) -> Any:
    """Run a method's command with built options; record a Result when the command records runs.

    In the background (the `--bg` option, unless `background` says otherwise) the run goes
    to a thread and a `RunHandle` comes back at once. `method_cls`: the class the caller
    already looked up (the registry is asked once per run).
    """
    if background is None:
        background = bool(getattr(options, "bg", False))
    cls = method_cls or registry().load(name)
    command = cls.command(word)
    settings = settings_mod.current()
    ctx = RunContext(new_run_id(name), name, settings, namespace or {}, progress_mode, background=background,
                     sweep_id=sweep_id, command=word, seed_controls=cls.seed_controls)
    handler = getattr(cls(), command.handler)
    # --seeds N: decided here, for every method that composes SeedOptions (one aggregate run of N runs)
    work = run_seeds if seed_count(options) > 1 else _run
    if work is run_seeds:
        check_seeds(options, command)
    if not background:
        return work(handler, command, options, ctx)
    ctx.progress(name)  # displayed now, from this cell; the thread only updates it
    handle = RunHandle(ctx.run_id, name, ctx.progress())
    handle.start(lambda: work(handler, command, options, ctx))
    return handle


def _run(handler, command, options, ctx: RunContext):
    device_pref = getattr(options, "device", None)
    # A launched run (--devices) measures its workers' memory; the kernel must not touch CUDA.
    from .launch.options import launched
    if launched(options):   # the one place that decides where a run executes: here, or on torchrun workers
        if not command.launchable:
            raise UsageError(one_process(type(handler.__self__), command))
        handler = _launcher(handler.__self__, command)
    monitor_device = ctx.device(device_pref) if command.records_run and not launched(options) else None
    try:
        with MemoryMonitor(monitor_device) as memory:
            watch = Stopwatch()
            result = handler(options, ctx)
    except BaseException as error:
        ctx.discard(error)
        if ctx._progress is not None:
            ctx._progress.end("error")
        raise
    if isinstance(result, Result) and command.records_run:
        finish(result, ctx, options, watch.elapsed, memory.peak_bytes)
    return result


# ---- --seeds N: one aggregate run of N runs ------------------------------------------------------------

def seed_count(options) -> int:
    return int(getattr(options, "seeds", 1) or 1)


def check_seeds(options, command) -> None:
    """What --seeds cannot be combined with, as one line each (checked before anything runs)."""
    if not command.records_run:
        raise UsageError("--seeds N repeats a run that is recorded: this command records none")
    last = int(getattr(options, "seed", 0) or 0) + seed_count(options) - 1
    if last > opts.SEED_MAX:
        raise UsageError(f"--seed {options.seed} with --seeds {seed_count(options)} runs up to seed {last}, past "
                         f"the largest seed {opts.SEED_MAX}: start lower")
    if getattr(options, "resume", None):
        raise UsageError("--seeds starts N new runs and --resume continues one: drop --seeds to resume, "
                         f"or --resume to run {seed_count(options)} seeds")
    if getattr(options, "name", None):   # %lora's and %rlhf dpo's adapter name: one per run
        raise UsageError(f"--name {options.name} with --seeds {seed_count(options)}: each seed trains its own adapter, "
                         "named by its run id; drop --name")


class SeedView:
    """One seed's side of the aggregate's one live view (one Stop for all seeds): it forwards to the shared
    `Progress`, except that a seed's end is a line in the view, not the end of the view."""

    def __init__(self, shared: Progress, label: str):
        self._shared, self.label = shared, label
        shared.state.history.clear()   # the chart shows the seed that runs
        shared.state.summary = label

    def __getattr__(self, name):
        return getattr(self._shared, name)

    def describe(self, summary: str = "", hint: str = "") -> None:
        """The standing line says which seed runs, before what the method says of it."""
        self._shared.describe(f"{self.label} · {summary}" if summary else "", hint)

    def end(self, status: str = "ok", **metrics) -> None:
        from .progress.events import format_metric
        shown = ", ".join(f"{k}={format_metric(v)}" for k, v in metrics.items() if isinstance(v, float))
        self._shared.log(f"{self.label}: {status}" + (f" ({shown})" if shown else ""))


def run_seeds(handler, command, options, ctx: RunContext) -> Result:
    """N runs of `options`, seeds --seed … --seed+N-1, one after another: each recorded as its own run linked to
    the aggregate (`parent_id`), then the aggregate Result (each metric's mean with its 95 % intervals) recorded
    under `ctx.run_id`. Stop ends the current seed cleanly and skips the rest; the finished seeds are kept."""
    import dataclasses

    from .runs import seeds as seeds_mod
    count, first = seed_count(options), int(getattr(options, "seed", 0) or 0)
    shared = ctx.progress(f"{ctx.method} · {count} seeds")
    results, watch = [], Stopwatch()
    for k in range(count):
        if shared.should_stop:
            break
        one = dataclasses.replace(options, seed=first + k, seeds=1, **({"out": None} if hasattr(options, "out") else {}))
        seed_ctx = RunContext(new_run_id(ctx.method), ctx.method, ctx.settings, ctx.namespace, ctx.progress_mode,
                              background=ctx.background, command=ctx.command, parent_id=ctx.run_id,
                              seed_controls=ctx.seed_controls)
        seed_ctx._progress = SeedView(shared, f"seed {first + k} ({k + 1} of {count})")
        try:
            result = _run(handler, command, one, seed_ctx)
        except BaseException:
            shared.end("error")
            raise
        results.append(result)
        if getattr(result, "status", "ok") != "ok":
            break
    kept = [r for r in results if getattr(r, "status", "ok") == "ok"]
    if not kept:
        shared.end("stopped")
        return results[-1] if results else Result(method=ctx.method, status="stopped")
    aggregate = seeds_mod.aggregate([_with_frame(r) for r in kept], [r.options.get("seed", first) for r in kept])
    result = seeds_result(aggregate, kept, results, count, ctx)
    finish(result, ctx, options, watch.elapsed, max(r.peak_mem_bytes for r in kept))
    shared.end(result.status, **{k: v for k, v in aggregate.metrics().items() if k in aggregate.intervals})
    return result


def _with_frame(result: Result) -> dict:
    return {**result.record(), "predictions_frame": result.predictions}


@dataclass(repr=False)
class SeedsResult(Result):
    """The aggregate of a --seeds run: each metric's mean with its named 95 % intervals (`.aggregate`), the
    per-seed Results (`.runs`, each recorded with `parent_id` = this run's id), and the seed-averaged per-item
    predictions (`.predictions`), which `%llm compare A B --paired` pairs."""
    runs: list = field(default_factory=list)
    aggregate: Any = None

    @property
    def headline(self) -> str:
        """The score with its intervals, e.g. 'test_accuracy 0.861 ± 0.012 (95 % CI, t over 3 seeds; …)'."""
        from .runs.compare import COMPARED_METRICS
        from .runs.seeds import interval_of
        names = [m for m in COMPARED_METRICS if m in self.aggregate.intervals] or list(self.aggregate.intervals)
        if not names:
            return f"{len(self.runs)} seeds, no numeric metric"
        t, rows = interval_of(self.metrics, names[0])
        said = [f"± {(i.high - i.low) / 2:.3f} ({i.method})" for i in (t, rows) if i is not None]
        return f"{names[0]} {self.metrics[names[0]]:.4g} " + "; ".join(said) + " — 95 % CIs"

    def __repr__(self) -> str:
        shown = self.aggregate.table().to_string(index=False, float_format=lambda v: f"{v:.4g}")
        return f"<SeedsResult {self.summary_line()}>\n{self.headline}\n{shown}"

    def _repr_html_(self) -> str:
        import copy
        import html as html_mod
        means = copy.copy(self)   # the metrics table shows the means; the intervals have a table of their own
        means.metrics = {k: self.metrics[k] for k in self.aggregate.intervals}
        return f"<div><b>{html_mod.escape(self.headline)}</b></div>" + Result._repr_html_(means)


def seeds_result(aggregate, kept: list[Result], ran: list[Result], asked: int, ctx: RunContext) -> SeedsResult:
    first = kept[0]
    status = "ok" if len(kept) == asked else "stopped"
    result = SeedsResult(method=ctx.method, metrics=aggregate.metrics(), model=first.model,
                         data_fingerprint=first.data_fingerprint, trainable_params=first.trainable_params,
                         total_params=first.total_params, device=first.device, dtype=first.dtype, status=status,
                         label_names=first.label_names, runs=kept, aggregate=aggregate,
                         wall_s=sum(r.wall_s for r in ran))
    result.tables["95 % intervals"] = aggregate.table()
    result.tables["per seed"] = aggregate.per_seed()
    result.predictions = aggregate.predictions()
    if result.predictions is not None:
        from .runs import predictions
        result.artifacts[predictions.FILE_KEY] = str(predictions.save(result.predictions, ctx.run_dir))
    result.artifacts["seed runs"] = ", ".join(aggregate.run_ids)
    if status != "ok":
        result.notes.append(f"{len(kept)} of {asked} seeds finished (stopped): the intervals are over those")
    if len(kept) >= 2 and aggregate.rows is None:
        result.notes.append("no per-item predictions: the interval is over seeds only (no bootstrap over test rows)")
    return result


def _launcher(method: Method, command):
    """The command's own launcher (`launch_<handler>`), or the method's run as a whole on torchrun workers."""
    own = getattr(method, command.launcher, None)
    if own is not None:
        return own
    from .launch import run_launched
    return lambda options, ctx: run_launched(method, options, ctx)


def one_process(cls: type[Method], command) -> str:
    """The line refusing --devices/--nodes to a command that runs in one process: what does take them."""
    word = next((w for w, c in cls.commands.items() if c is command), None)
    what = f"%{cls.name}" + (f" {word}" if word else "")
    takers = [f"%{cls.name} {w}" for w, c in cls.commands.items() if c.launchable]
    takers += [t for t in ("%finetune", "%lora") if t != f"%{cls.name}"]
    return (f"{what} runs in one process: drop --devices/--nodes (they take {', '.join(takers[:-1])} and "
            f"{takers[-1]}" + ("" if len(takers) > 2 else ", and other training methods") + ")")


def seeded_line(controls: tuple[str, ...], options) -> str:
    """What the seed controlled in this run, from the method's one declaration (`Method.seed_controls`)."""
    if not controls or not hasattr(options, "seed"):
        return ""
    seeds = seed_count(options)
    which = f"seeds {options.seed}…{options.seed + seeds - 1}" if seeds > 1 else f"seed {options.seed}"
    return f"{which} controlled: {', '.join(controls)}"


def finish(result: Result, ctx: RunContext, options, wall_s: float, peak_bytes: int) -> None:
    result.run_id = ctx.run_id
    result.method, result.command = ctx.method, ctx.command   # recorded apart; `result.title` joins them
    result.options = opts.as_dict(options)
    result.wall_s = result.wall_s or wall_s
    result.peak_mem_bytes = result.peak_mem_bytes or peak_bytes
    result.sweep_id, result.parent_id = ctx.sweep_id, ctx.parent_id
    result.seeded = result.seeded or seeded_line(ctx.seed_controls, options)
    try:   # the Result reaches the user whatever happens to the store: its failure is one line
        problem = ctx.store.record(result.record())
    except Exception as exc:   # noqa: BLE001 - a store bug must not lose a finished run either
        problem = f"run {ctx.run_id} was not recorded ({type(exc).__name__}: {exc})"
    if problem:
        from .runs.store import warn
        warn(problem)
        result.notes.append(problem)


class RunHandle:
    """A run in a background thread: `.stop()`, `.wait()`, `.result()`, `.done`."""

    def __init__(self, run_id: str, method: str, progress: Progress):
        self.run_id, self.method, self.progress = run_id, method, progress
        self._result = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, work) -> None:
        def target():
            try:
                self._result = work()
            except BaseException as error:  # kept for .result(), which re-raises it
                self._error = error
        self._thread = threading.Thread(target=target, name=f"llm-magics-{self.run_id}", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def stop(self) -> None:
        """Ask the run to end cleanly after the current step (what the Stop button does)."""
        self.progress.request_stop()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def result(self, timeout: float | None = None):
        if not self.wait(timeout):
            raise TimeoutError(f"run {self.run_id} is still going; .stop() ends it, .wait() waits")
        if self._error is not None:
            raise self._error
        return self._result

    @property
    def status(self) -> str:
        if not self.done:
            return "stopping" if self.progress.should_stop else "running"
        return "failed" if self._error is not None else getattr(self._result, "status", "ok")

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id} ({self.method}): {self.status}; .result() when done, .stop() to end>"

    def _repr_html_(self) -> str:
        return f"<code>{self.run_id}</code> runs in the background: <b>{self.status}</b>. " \
               "<code>.result()</code> returns its Result when done; <code>.stop()</code> ends it cleanly."
