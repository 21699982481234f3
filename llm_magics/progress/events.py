"""Progress is an event stream: the engine emits, sinks render.

The engine only ever talks to a `Progress`: `start`, `advance`, `eval`, `log`,
`end`. It also carries the stop flag a Stop button or an interrupt sets, which
training loops poll between steps.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Event:
    kind: str                     # start | step | eval | log | end
    run_id: str
    title: str
    done: int = 0
    total: int | None = None
    unit: str = "rows"
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    time: float = field(default_factory=time.time)


@dataclass
class State:
    """What every sink needs to draw, kept once here rather than in each sink."""
    run_id: str
    title: str
    unit: str = "rows"
    done: int = 0
    total: int | None = None
    started: float = field(default_factory=lambda: time.perf_counter())      # this phase's: rate and ETA
    run_started: float = field(default_factory=lambda: time.perf_counter())  # the run's view: elapsed time
    ended: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    status: str = "running"       # running | ok | stopped | error
    info: dict[str, Any] = field(default_factory=dict)
    summary: str = ""             # one line under the title (what trains)
    hint: str = ""                # shown while running only (how to stop)

    @property
    def elapsed(self) -> float:
        """The whole run's time, every phase included (frozen once the run ends)."""
        return (self.ended or time.perf_counter()) - self.run_started

    @property
    def phase_elapsed(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def rate(self) -> float | None:
        return self.done / self.phase_elapsed if self.done and self.phase_elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        if not self.total or not self.rate or self.done >= self.total:
            return None
        return (self.total - self.done) / self.rate


STOP_REQUESTED = "stop requested: finishing the current step"


class Throttle:
    """Step events pass at most every `interval` seconds; every other event (start, eval, log, end) passes."""
    interval = 1.0

    def __init__(self, interval: float | None = None):
        if interval is not None:
            self.interval = interval
        self._last = 0.0

    def due(self, event: "Event") -> bool:
        now = time.monotonic()
        if event.kind == "step" and now - self._last < self.interval:
            return False
        self._last = now
        return True


class Sink(Protocol):
    def handle(self, event: Event, state: State) -> None: ...


class Progress:
    """The engine's side of progress reporting."""

    def __init__(self, sinks: list[Sink] | None = None, run_id: str = "", title: str = ""):
        self.sinks = list(sinks or [])
        self.state = State(run_id=run_id, title=title)
        self.stop_requested = threading.Event()
        self.events: list[Event] = []   # kept for tests and for replay into a late widget
        self._lock = threading.Lock()

    # -- emitted by the engine --------------------------------------------------------
    def start(self, total: int | None = None, unit: str = "rows", **info) -> None:
        self.state.total, self.state.unit, self.state.done = total, unit, 0
        self.state.info.update(info)
        # Elapsed time keeps counting from the view's opening: loading a model, a second start
        # (extract, then fit) and every phase are parts of one run.
        self.state.started = time.perf_counter()
        self._emit("start", info=info)

    def phase(self, title: str, total: int | None = None, unit: str | None = None) -> None:
        """A new stage of the same run (extracting features, then fitting): resets the bar."""
        self.state.title, self.state.total, self.state.done = title, total, 0
        if unit:
            self.state.unit = unit
        self.state.started = time.perf_counter()
        self._emit("start")

    def advance(self, n: int = 1, **metrics) -> None:
        self.state.done += n
        if metrics:
            self.state.metrics.update(metrics)
            self.state.history.append((self.state.done, _numbers(metrics)))
        self._emit("step", metrics=metrics)

    def set(self, **values) -> None:
        """Update shown values (learning rate, tokens/s) without charting them."""
        self.state.metrics.update(values)

    def eval(self, **metrics) -> None:
        self.state.metrics.update(metrics)
        self.state.history.append((self.state.done, _numbers(metrics)))
        self._emit("eval", metrics=metrics)

    def describe(self, summary: str = "", hint: str = "") -> None:
        """A standing line under the title, and a hint shown only while the run goes on."""
        self.state.summary = summary or self.state.summary
        self.state.hint = hint or self.state.hint
        self._emit("log", message=summary)

    def log(self, message: str) -> None:
        self.state.messages.append(message)
        self._emit("log", message=message)

    def end(self, status: str = "ok", **metrics) -> None:
        s = self.state
        s.status = status
        s.ended = time.perf_counter()
        s.metrics.update(metrics)
        if self.should_stop:   # the view says where the run stopped, not "stop requested" forever
            s.messages = [m for m in s.messages if m != STOP_REQUESTED]
            if status == "stopped":
                where = (f"step {s.done:,}" if s.unit == "steps" else f"{s.done:,} {s.unit}") \
                    + (f" of {s.total:,}" if s.total else "")
                s.messages.append(f"stopped at {where}")
            elif status == "ok":
                s.messages.append("stop requested after the last step: the run had finished")
        self._emit("end", metrics=metrics)

    # -- asked for by the user ----------------------------------------------------------
    def request_stop(self) -> None:
        if self.stop_requested.is_set():
            return
        self.stop_requested.set()
        self.log(STOP_REQUESTED)

    @property
    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def _emit(self, kind: str, metrics=None, message: str = "", info=None) -> None:
        s = self.state
        event = Event(kind=kind, run_id=s.run_id, title=s.title, done=s.done, total=s.total,
                      unit=s.unit, metrics=dict(metrics or {}), message=message)
        with self._lock:
            self.events.append(event)
            for sink in self.sinks:
                sink.handle(event, s)


def _numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def format_metric(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
