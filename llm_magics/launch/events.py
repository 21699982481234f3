"""Rank 0's progress as JSON lines, replayed in the kernel onto the run's own `Progress`.

The worker's `EventWriter` is a `Progress` whose every call (start, phase, advance,
set, eval, describe, log, end) is also written as one line `{"call": ..., "done":
..., "args": ..., "kwargs": ...}` to `launch/events.jsonl` in the run's folder
(`done`: the worker's count before the call, which a resumed run sets without one). The kernel
tails that file and makes the same calls on the run's `Progress`, so its live view
(bar, ETA, metrics, chart) is the one a one-process run draws. Only complete lines
are read: a line the worker is still writing waits for the next poll.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..progress.events import Progress

CALLS = ("start", "phase", "advance", "set", "eval", "describe", "log", "end")


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):   # numpy / torch scalars
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    return str(value)


class EventWriter(Progress):
    """A worker's Progress: rank 0 writes its calls to `path`; other ranks pass path=None.

    `should_stop` is the stop every rank agreed on at the last optimizer step (see
    engine/distributed.py), never a flag one rank alone has seen: the ranks must stop at
    the same step."""

    def __init__(self, path: Path | None, run_id: str = "", title: str = "", sinks: list | None = None):
        super().__init__(sinks or [], run_id, title)
        self.path = Path(path) if path else None
        self._file = open(self.path, "a", encoding="utf-8") if self.path else None
        self.agreed = False
        self.stop_file: Path | None = None   # rank 0: the kernel's STOP file (launch/STOP), for sync_stop

    def _write(self, call: str, args: tuple, kwargs: dict) -> None:
        if self._file is None:
            return
        line = json.dumps({"call": call, "time": time.time(), "done": self.state.done,
                           "args": [_plain(a) for a in args], "kwargs": {k: _plain(v) for k, v in kwargs.items()}})
        self._file.write(line + "\n")
        self._file.flush()

    def agree_stop(self) -> None:
        self.agreed = True
        self.stop_requested.set()

    def sync_stop(self) -> bool:
        """For a loop that is not the engine's (TRL's Trainer, through our callback), at every optimizer
        step, on every rank: the ranks agree whether to stop (a stop asked on any rank, or the kernel's
        STOP file, which rank 0 reads); True once they have. One all-reduce of one int."""
        local = self.stop_requested.is_set() or bool(self.stop_file is not None and self.stop_file.exists())
        try:
            import torch
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                flag = torch.tensor([1 if local else 0], dtype=torch.int32)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                local = bool(int(flag))
        except ImportError:   # pragma: no cover - torch is a dependency
            pass
        if local:
            self.agree_stop()
        return self.agreed

    @property
    def should_stop(self) -> bool:
        return self.agreed

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _recording(name):
    base = getattr(Progress, name)

    def call(self, *args, **kwargs):
        self._write(name, args, kwargs)
        return base(self, *args, **kwargs)
    call.__name__ = name
    call.__doc__ = base.__doc__
    return call


for _name in CALLS:
    setattr(EventWriter, _name, _recording(_name))


class EventReader:
    """Tails an events file; `relay(progress)` makes the calls it finds since the last time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.ended: dict | None = None   # the worker's end call, once seen

    def relay(self, progress: Progress) -> int:
        """Replay new complete lines; the number replayed."""
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        done = chunk.rfind(b"\n") + 1
        if not done:
            return 0
        self.offset += done
        count = 0
        for raw in chunk[:done].splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            call = event.get("call")
            if call not in CALLS:
                continue
            if call == "end":   # ended by the launcher, after the Result is back
                self.ended = event
                continue
            if call not in ("start", "phase") and isinstance(event.get("done"), int):
                # Where the worker's count stood (a resumed run starts at its checkpoint's step, set
                # without a call): the bar and the chart's steps are the worker's.
                progress.state.done = event["done"]
            getattr(progress, call)(*event.get("args", []), **event.get("kwargs", {}))
            if call in ("start", "phase") and "time" in event:
                # The phase began when the worker said so, not when this poll read it: rate and ETA
                # would otherwise count the first steps as if they took no time.
                late = max(0.0, time.time() - float(event["time"]))
                progress.state.started = time.perf_counter() - late
            count += 1
        return count
