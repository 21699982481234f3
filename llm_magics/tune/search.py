"""`%llm sweep --search tpe`: a search that learns where to look, through Optuna.

    %llm sweep finetune --data df --eval-every 5 --grid "lr=1e-5~1e-2 epochs=1,2,3" --search tpe --trials 20 --prune

Each trial is a point of the sweep (its own recorded run, as in a grid): Optuna's TPE proposes the swept
options' values from the trials so far; the run's evaluation events feed `trial.report` (the validation
metric at each evaluation step) and, with --prune, a point whose metric trails the earlier trials' median at
the same step is stopped cleanly and marked pruned. The study is kept in SQLite beside the run store
(`studies.db`), under --study NAME: the same name again resumes it, and its runs share that name as their
sweep id. When the study ends, the parameters' importance (Optuna's fANOVA) is shown with the leaderboard.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from ..errors import UsageError
from .sweep import LEARNING_SEARCHES, Axis, Sweep, SweepOptions, lower_is_better, new_sweep_id, option_column

DEFAULT_METRIC = "val_accuracy"   # a validation metric: the study never chooses on the test set
STARTUP_TRIALS = 2                # the pruner compares with at least this many finished trials


def optuna():
    try:
        import optuna as module
    except ImportError:
        raise UsageError("%llm sweep --search tpe needs Optuna: pip install 'llm-magics[tune]'") from None
    module.logging.set_verbosity(module.logging.WARNING)   # one line per trial would flood the cell
    return module


def storage_url() -> str:
    """The studies' SQLite file, in the run store's folder."""
    from ..settings import current
    folder = current().runs_path.parent
    folder.mkdir(parents=True, exist_ok=True)   # before the first run creates it
    return f"sqlite:///{folder / 'studies.db'}"


def distribution(axis: Axis):
    """The space of one swept option: its listed values, or its lo~hi range (log-uniform when it spans
    orders of magnitude, as the random search draws it)."""
    dist = optuna().distributions
    if axis.values:
        return dist.CategoricalDistribution(list(axis.values))
    if axis.spec.kind is int:
        return dist.IntDistribution(int(axis.low), int(axis.high))
    return dist.FloatDistribution(axis.low, axis.high, log=axis.low > 0 and axis.high / axis.low >= 10)


def shown(value: Any) -> str:
    """A proposed value as the magic line writes it."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class PruneOnEval:
    """A progress sink: each evaluation's metric goes to the trial; with pruning on, a trailing trial's run is
    asked to stop (from another thread: the sink runs under the progress lock that stopping takes too)."""

    def __init__(self, trial, metric: str, handle, prune: bool):
        self.trial, self.metric, self.run, self.prune = trial, metric, handle, prune
        self.steps: set[int] = set()
        self.pruned_at: int | None = None

    def handle(self, event, state) -> None:
        if event.kind != "eval" or self.metric not in event.metrics or self.pruned_at is not None:
            return
        step = int(event.done)
        if step in self.steps:
            return
        self.steps.add(step)
        self.trial.report(float(event.metrics[self.metric]), step)
        if self.prune and self.trial.should_prune():
            self.pruned_at = step
            threading.Thread(target=self.run.stop, daemon=True).start()


class StudySweep(Sweep):
    """A sweep whose points an Optuna study proposes, one after another; rows grow as trials run."""

    def __init__(self, method: str, word: str | None, base_tokens: list[str], axes: list[Axis],
                 options: SweepOptions, namespace: dict | None = None, cell: str | None = None,
                 progress_mode: str | None = None):
        name = options.study or new_sweep_id()
        super().__init__(method, word, base_tokens, axes, [], options.metric or DEFAULT_METRIC, namespace,
                         cell=cell, sweep_id=name, progress_mode=progress_mode)
        self.trials, self.prune = options.trials, options.prune
        module = optuna()
        direction = "minimize" if lower_is_better(self.metric) else "maximize"
        self.study = module.create_study(
            study_name=name, storage=storage_url(), load_if_exists=True, direction=direction,
            sampler=module.samplers.TPESampler(seed=options.sweep_seed),
            pruner=module.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=1))
        if self.study.direction.name.lower() != direction:
            raise UsageError(f"study {name!r} {self.study.direction.name.lower()}s its metric; {self.metric} "
                             f"asks to {direction}: name another --study")
        self.distributions = {a.name: distribution(a) for a in axes}
        self.importance: dict[str, float] = {}

    def _work(self) -> None:
        try:
            for number in range(1, self.trials + 1):
                if self._stop.is_set():
                    break
                self.run_trial(number)
            self.importance = self.param_importance()
        finally:
            self.current = None
            self.ended = time.time()
            self._notify()

    def run_trial(self, number: int) -> None:
        module = optuna()
        trial = self.study.ask(self.distributions)
        point = {name: shown(value) for name, value in trial.params.items()}
        row = {"point": number, "trial": trial.number, **{option_column(n): v for n, v in point.items()},
               "status": "waiting", "run_id": "", "message": "", "line": self.line_of(point)}
        self.rows.append(row)
        watcher: list[PruneOnEval] = []

        def watch(handle):
            sink = PruneOnEval(trial, self.metric, handle, self.prune)
            watcher.append(sink)
            with handle.progress._lock:
                handle.progress.sinks.append(sink)

        result = self.run_row(row, watch)
        pruned = watcher and watcher[0].pruned_at is not None
        value = row.get(self.metric)
        if pruned:
            row["status"] = "pruned"
            row["message"] = f"pruned at step {watcher[0].pruned_at}"
            self.study.tell(trial, state=module.trial.TrialState.PRUNED)
        elif result is not None and isinstance(value, (int, float)) and value == value:
            self.study.tell(trial, float(value))
        else:
            if result is not None:
                row["message"] = row["message"] or f"no {self.metric} to tell the study"
            self.study.tell(trial, state=module.trial.TrialState.FAIL)
        self._notify()

    def param_importance(self) -> dict[str, float]:
        """Each swept option's share of the metric's variance over the finished trials (empty below two, or
        with one option: nothing to compare)."""
        if len(self.distributions) < 2:
            return {}
        try:
            return dict(optuna().importance.get_param_importances(self.study))
        except (RuntimeError, ValueError):   # too few finished trials, or no spread in the metric
            return {}

    @property
    def recorded_trials(self) -> int:
        """Every trial the study holds, this sweep's and earlier ones' under the same --study."""
        return len(self.study.trials)


LEARNING_SEARCHES["tpe"] = StudySweep
