"""One way to run a method, shared by the magics and the Python API.

It times the run, measures peak memory, hands the method a `RunContext`,
records the Result in the run store — and, when the user made a mistake
(UsageError) or the run failed, records nothing and removes the run's folder.
"""
from __future__ import annotations

import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as opts
from . import settings as settings_mod
from .engine.device import MemoryMonitor, Stopwatch, pick_device
from .method import Method, Result
from .progress import Progress, in_kernel, make_progress
from .registry import registry
from .runs import RunStore


def new_run_id(method: str) -> str:
    return f"{method}-{secrets.token_hex(3)}"


@dataclass
class RunContext:
    """What a method may use besides its options."""
    run_id: str
    method: str
    settings: settings_mod.Settings
    namespace: dict = field(default_factory=dict)
    progress_mode: str | None = None
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

    def progress(self, title: str | None = None) -> Progress:
        """The run's progress reporter, created on first use (one live display per run)."""
        if self._progress is None:
            mode = self.progress_mode or self.settings.progress
            self._progress = make_progress(self.run_id, title or self.method, mode)
        elif title:
            self._progress.state.title = title
        return self._progress

    def device(self, preference: str | None = None):
        return pick_device(preference if preference not in (None, "", "auto") else self.settings.device)

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

    def discard(self) -> None:
        if self._run_dir is not None:
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


def execute(name: str, word: str | None, options, namespace: dict | None = None,
            progress_mode: str | None = None) -> Any:
    """Run a method's command with built options; record a Result when the command records runs."""
    cls = registry().load(name)
    command = cls.command(word)
    settings = settings_mod.current()
    ctx = RunContext(new_run_id(name), name, settings, namespace or {}, progress_mode)
    device_pref = getattr(options, "device", None)
    monitor_device = ctx.device(device_pref) if command.records_run else None
    handler = getattr(cls(), command.handler)
    try:
        with MemoryMonitor(monitor_device) as memory:
            watch = Stopwatch()
            result = handler(options, ctx)
    except BaseException:
        ctx.discard()
        if ctx._progress is not None:
            ctx._progress.end("error")
        raise
    if isinstance(result, Result) and command.records_run:
        finish(result, ctx, options, watch.elapsed, memory.peak_bytes)
    return result


def finish(result: Result, ctx: RunContext, options, wall_s: float, peak_bytes: int) -> None:
    result.run_id = ctx.run_id
    result.method = result.method or ctx.method
    result.options = opts.as_dict(options)
    result.wall_s = result.wall_s or wall_s
    result.peak_mem_bytes = result.peak_mem_bytes or peak_bytes
    ctx.store.record(result.record())
