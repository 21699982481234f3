"""`%llm ladder`: every rung of adaptation on the user's data, with its cost, intervals and a recommendation.

    %llm ladder --data train_df --test test_df --budget 20m --seeds 3 --out lad

Each rung is a registered method's line ("probe", "finetune --train last:1", "lora --r 4", a plugin's
"bitfit"), run once per seed (`--seed s`) one after another in a background thread, each run recorded with
the ladder's id (in the run store's sweep_id column, as a sweep's points are). The first seed of every rung is
its pilot: timed, it tells how many further seeds fit in `--budget`; a pilot that runs past its share of what is
left (the time left over the rungs still to pilot) is stopped cleanly and the rung skipped. Stop ends the current run cleanly and skips the rest; whatever finished is kept.

The summary (`LadderResult`) is made from run records, so the same code draws it live and, from the ladder's
file in the cache folder, after a restart (`%llm compare --ladder ID`): the table (the metric's mean with
Student's t interval over seeds and a bootstrap over test rows of the seed-averaged correctness, training
seconds, peak memory, trainable parameters, per-query latency), the Pareto frontier of quality against a cost,
each rung's paired test against the best (`runs.stats.paired_difference` on the shared test rows) and one
sentence: the cheapest rung not significantly below the best.
"""
from __future__ import annotations

import html
import json
import os
import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import options as opts
from ..errors import UsageError
from ..progress.events import format_seconds
from ..progress.theme import BEST_ROW, FAINT, WARN, scroll_box, status_colour
from ..records import as_dict
from ..runs import predictions, seeds, stats
from ..runs.store import RunStore
from ..settings import current
from .background import BackgroundJob

ICL_DEFAULT_SHOTS = 4
COSTS = {"train_s": "training seconds", "peak_mem_bytes": "peak memory", "trainable_params": "trainable parameters",
         "latency_ms": "per-query latency (ms)"}
NO_TRAINING = 0   # the training cost of a rung that trains nothing (in-context learning)


def default_rungs(shots: int = ICL_DEFAULT_SHOTS) -> list[tuple[str, str]]:
    """(label, line): zero- and k-shot calibrated ICL on the causal model, then the encoder's rungs."""
    return [("ICL 0-shot", "icl --shots 0"), (f"ICL {shots}-shot", f"icl --shots {shots}"),
            ("probe", "probe"), ("head", "finetune --train head"), ("last:1", "finetune --train last:1"),
            ("LoRA", "lora"), ("all layers", "finetune --train all")]


def parse_budget(text: str | None) -> float | None:
    """'45m' / '90s' / '1.5h' / '600' (seconds) → seconds; None: no budget."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--budget {text!r}: give a time such as 20m, 90s or 1.5h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def budget_problem(value) -> str | None:
    try:
        parse_budget(value)
    except UsageError:
        return f"give a time such as 20m, 90s or 1.5h, got {value!r}"
    return None


@dataclass
class LadderOptions:
    data: Any = opts.option(positional=False, help="the training rows (ICL draws its demonstrations from them)",
                            metavar="DATA")
    test: Any = opts.option(positional=False, help="the test rows every rung is scored on (the same rows, so rungs "
                                                   "pair up)", metavar="DATA")
    budget: str | None = opts.option(None, "the time the whole ladder may take (20m, 90s, 1h): each rung's first seed "
                                           "is its timed pilot; rungs and seeds that will not fit are skipped",
                                     check=budget_problem, metavar="TIME")
    seeds: int = opts.option(3, "runs of each rung, seeds 0 … N-1 (for ICL the seed draws the demonstrations)",
                             check=opts.positive, metavar="N")
    rungs: str | None = opts.option(None, "the rungs, ';'-separated method lines, plugins included (default: ICL "
                                          "0-shot and k-shot, probe, head, last:1, LoRA, all layers)",
                                    metavar="\"probe; lora --r 4; bitfit\"")
    model_encoder: str = opts.option("minilm", "the encoder the probe and the trained rungs adapt")
    model_causal: str = opts.option("smollm2", "the causal model the in-context rungs prompt")
    shots: int = opts.option(ICL_DEFAULT_SHOTS, "demonstrations of the k-shot ICL rung", check=opts.positive)
    template: str | None = opts.option(None, "the in-context rungs' prompt (default: \"Text: {text}\\nAnswer: "
                                             "{label}\" with the data's columns); \\n is a newline", metavar="TEXT")
    text: str | None = opts.option(None, "the text column (default: inferred, as every method does)")
    label: str | None = opts.option(None, "the label column (default: inferred)")
    metric: str = opts.option("test_accuracy", "the score rungs are ranked by")
    cost: str = opts.option("train_s", "the cost the Pareto frontier and the recommendation weigh quality against",
                            choices=tuple(COSTS))
    out: str | None = opts.option(None, "bind the ladder to this variable", metavar="NAME")


# ---- rungs ------------------------------------------------------------------------------------

@dataclass
class Rung:
    label: str
    method: str
    word: str | None
    tokens: list[str]                    # the rung's own options, as typed
    status: str = "waiting"              # waiting, running, ok, partial (some seeds), stopped, skipped, failed
    reason: str = ""                     # why it was skipped or failed (or which seeds were)
    run_ids: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)   # one run record per finished seed
    pilot_s: float | None = None


def parse_rungs(text: str | None, shots: int = ICL_DEFAULT_SHOTS) -> list[Rung]:
    from ..registry import command_word, registry
    pairs = default_rungs(shots) if text is None else [(p.strip(), p.strip()) for p in text.split(";") if p.strip()]
    if not pairs:
        raise UsageError("--rungs names no method: e.g. --rungs \"probe; lora --r 4; bitfit\"")
    rungs = []
    for label, line in pairs:
        tokens = opts.split_line(line)
        cls = registry().load(tokens[0])
        word = command_word(cls, tokens[1:])
        if word and not cls.commands[word].records_run:
            raise UsageError(f"--rungs: {tokens[0]} {word} records no run; a rung must train or evaluate")
        own = tokens[2:] if word else tokens[1:]
        if any(t.split("=", 1)[0] in ("--seeds", "--seed") for t in own):
            raise UsageError(f"--rungs: {label!r} sets its own seed; the ladder's --seeds N runs every rung with "
                             "seeds 0 … N-1")
        rungs.append(Rung(label, tokens[0], word, own))
    labels = [r.label for r in rungs]
    if len(set(labels)) < len(labels):
        raise UsageError("--rungs: a rung is given twice; each rung once (vary its options to make two)")
    return rungs


def _option_names(rung: Rung) -> dict[str, opts.Spec]:
    from ..registry import registry
    return {s.name: s for s in opts.specs(registry().load(rung.method).command(rung.word).options)}


def _is_causal(specs: dict[str, opts.Spec], options: LadderOptions) -> bool:
    """A method whose own default model is the causal alias prompts a causal model (ICL); the rest adapt the encoder."""
    spec = specs.get("model")
    return spec is not None and spec.default == "smollm2"


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    labels: list[str]


def data_columns(options: LadderOptions, namespace: dict) -> Columns:
    """The text and label columns and the label values (the verbalizers an in-context rung scores)."""
    from ..data.columns import infer_label_column, infer_text_column
    from ..data.load import load_frame
    frame = load_frame(options.data, namespace, "--data")
    text = infer_text_column(frame, options.text)
    label = infer_label_column(frame, options.label, text)
    values = sorted({str(v) for v in frame[label].dropna()})
    return Columns(text, label, values)


def rung_line(rung: Rung, options: LadderOptions, columns: Columns, seed: int) -> tuple[list[str], str | None]:
    """The tokens (and cell) of one seed of one rung: the ladder's data and model, the rung's own options after
    them (the last value of an option wins), the seed last."""
    specs = _option_names(rung)
    tokens = [rung.word] if rung.word else []
    if "--model" not in rung.tokens and "model" in specs:
        tokens += ["--model", options.model_causal if _is_causal(specs, options) else options.model_encoder]
    cell = None
    if "test" in specs:
        tokens += ["--data", options.data, "--test", options.test]
        tokens += [t for name in ("text", "label") if name in specs for t in (f"--{name}", getattr(columns, name))]
    elif "demos" in specs:   # prompted: the test rows are the queries, the training rows the demonstrations
        tokens += ["--data", options.test, "--demos", options.data, "--labels", ",".join(columns.labels),
                   "--label", columns.label, "--no-zero-shot"]
        cell = (options.template.replace("\\n", "\n") if options.template
                else f"Text: {{{columns.text}}}\nAnswer: {{{columns.label}}}")
    else:
        raise UsageError(f"--rungs: {rung.method} takes neither --test nor --demos: a rung must score the test rows")
    return tokens + rung.tokens + ["--seed", str(seed)], cell


# ---- budget ------------------------------------------------------------------------------------

def plan_seeds(pilot_s: dict[str, float], seeds: int, left_s: float | None) -> dict[str, int]:
    """How many seeds beyond the pilot each rung gets: round by round (every rung one more seed), while a whole
    round fits in the time left; in the last round, rungs in order while each still fits."""
    extra = {label: 0 for label in pilot_s}
    if left_s is None:
        return {label: seeds - 1 for label in pilot_s}
    for _ in range(seeds - 1):
        for label, cost in pilot_s.items():
            if cost <= left_s:
                extra[label] += 1
                left_s -= cost
            else:
                left_s = -1.0   # keep rounds level: once a rung misses a round, the rest of the round misses too
    return extra


# ---- the ladder ---------------------------------------------------------------------------------

def new_ladder_id() -> str:
    return f"ladder-{secrets.token_hex(4)}"


def ladders_folder() -> Path:
    return Path(current().cache_dir) / "ladders"


class Ladder(BackgroundJob):
    """The rungs of one ladder, run seed by seed in a background thread.

    `.stop()` ends the current run cleanly and skips the rest; `.wait()`; `.result()` (a LadderResult of
    what has finished so far); `.rungs` (each one's status, reason, run ids)."""

    def __init__(self, options: LadderOptions, namespace: dict | None = None, ladder_id: str | None = None,
                 progress_mode: str | None = None):
        self.options = options
        self.namespace = namespace if namespace is not None else {}
        self.id = ladder_id or new_ladder_id()
        self.progress_mode = progress_mode
        self.budget_s = parse_budget(options.budget)
        self.rungs = parse_rungs(options.rungs, options.shots)
        self.columns = data_columns(options, self.namespace)
        super().__init__()
        self.on_run: list[Callable] = []
        self.started = self.ended = None

    # -- running ------------------------------------------------------------------------------
    def start(self) -> "Ladder":
        self.started = time.time()
        self._thread = threading.Thread(target=self._work, name=f"llm-magics-{self.id}", daemon=True)
        self._thread.start()
        return self

    def run(self) -> "LadderResult":
        """Run to the end here (no thread) and return the result."""
        self.started = time.time()
        self._work()
        return self.result()

    def left_s(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - (time.time() - self.started)

    def _work(self) -> None:
        try:
            self._save()
            for index, rung in enumerate(self.rungs):   # the pilots: each rung's first seed, timed
                if self._skip_if_stopped(rung):
                    continue
                left = self.left_s()
                if left is not None and left <= 0:
                    self._skip(rung, f"skipped: the budget ({format_seconds(self.budget_s)}) was spent by the "
                                     "rungs before it")
                    continue
                # a pilot gets its share of what is left, so one slow rung cannot crowd out the rungs after it
                self._run_seed(rung, 0, limit_s=None if left is None else left / (len(self.rungs) - index))
            ran = {r.label: r.pilot_s for r in self.rungs if r.records and r.pilot_s is not None}
            extra = plan_seeds(ran, self.options.seeds, self.left_s())
            for seed in range(1, self.options.seeds):
                for rung in self.rungs:
                    if rung.label in ran and extra[rung.label] >= seed and not self._stop.is_set():
                        self._run_seed(rung, seed)
            for rung in self.rungs:
                self._settle(rung, extra.get(rung.label, 0), ran.get(rung.label))
        finally:
            self.current = None
            self.ended = time.time()
            self._save()
            self._notify()

    def _skip_if_stopped(self, rung: Rung) -> bool:
        if self._stop.is_set():
            self._skip(rung, "skipped: the ladder was stopped")
        return self._stop.is_set()

    def _skip(self, rung: Rung, reason: str) -> None:
        rung.status, rung.reason = "skipped", reason
        self._notify()

    def _run_seed(self, rung: Rung, seed: int, limit_s: float | None = None) -> None:
        from ..registry import parse_magic_line
        from ..runner import execute
        rung.status = "running"
        self._notify()
        timer = None
        try:
            tokens, cell = rung_line(rung, self.options, self.columns, seed)
            _, word, options = parse_magic_line(rung.method, tokens, cell)
            began = time.time()
            handle = execute(rung.method, word, options, namespace=self.namespace, progress_mode=self.progress_mode,
                             background=True, sweep_id=self.id)
            self.current = handle
            rung.run_ids.append(handle.run_id)
            for callback in self.on_run:
                callback(handle)
            if self._stop.is_set():
                handle.stop()
            if limit_s is not None:   # a pilot past the time left is stopped cleanly, like Stop
                timer = threading.Timer(max(limit_s, 0.0), handle.stop)
                timer.daemon = True
                timer.start()
            result = handle.result()
            took = time.time() - began
        except Exception as error:   # noqa: BLE001 - a failed rung is marked, the ladder goes on
            rung.status = "failed"
            rung.reason = str(error) if isinstance(error, UsageError) else f"{type(error).__name__}: {error}"
            self._notify()
            return
        finally:
            if timer is not None:
                timer.cancel()
            self.current = None
        status = getattr(result, "status", "ok")
        if status != "ok":   # stopped part-way: not a score of the rung
            over_budget = limit_s is not None and took >= limit_s and not self._stop.is_set()
            rung.status = "skipped" if over_budget else "stopped"
            rung.reason = (f"skipped: its pilot ran past its share of the budget ({format_seconds(limit_s)}) and "
                           "was stopped" if over_budget else f"stopped during seed {seed}")
            self._notify()
            return
        record = result.record()
        record["predictions_frame"] = getattr(result, "predictions", None)
        rung.records.append(record)
        if seed == 0:
            rung.pilot_s = took
        rung.status = "waiting" if seed + 1 < self.options.seeds else "ok"   # its next seed comes in a later round
        self._save()
        self._notify()

    def _settle(self, rung: Rung, extra: int, pilot_s: float | None) -> None:
        """A rung's final status, and the reason when it got fewer seeds than asked."""
        if rung.status in ("skipped", "failed", "stopped") or not rung.records:
            return
        done, asked = len(rung.records), self.options.seeds
        if done == asked:
            rung.status = "ok"
            return
        rung.status = "partial"
        if self._stop.is_set():
            rung.reason = f"{done} of {asked} seeds: the ladder was stopped"
        elif extra < asked - 1:
            rung.reason = (f"{done} of {asked} seeds: each takes about {format_seconds(pilot_s)} (its pilot) and the "
                           f"rest would not fit in the budget of {format_seconds(self.budget_s)}")
        else:
            rung.reason = f"{done} of {asked} seeds: a seed failed or was stopped"

    # -- asked for by the user (and stop / stopping / wait from BackgroundJob) --------------------
    @property
    def finished(self) -> bool:
        return self.ended is not None

    @property
    def status(self) -> str:
        if not self.finished:
            return "stopping" if self.stopping else "running"
        return "stopped" if self.stopping else "done"

    def result(self) -> "LadderResult":
        return LadderResult(self.id, [_rung_state(r) for r in self.rungs], self.options.metric, self.options.cost,
                            self.options.seeds, self.status, self.budget_s)

    def _save(self) -> None:
        """The ladder's file (rungs, their run ids, statuses and reasons): `%llm compare --ladder ID` reads it."""
        state = {"id": self.id, "options": as_dict(self.options), "status": self.status, "budget_s": self.budget_s,
                 "rungs": [{k: v for k, v in _rung_state(r).items() if k != "records"} for r in self.rungs]}
        target = ladders_folder() / f"{self.id}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps(state, indent=1))
        os.replace(staging, target)

    def __repr__(self) -> str:
        return f"<Ladder {self.id}: {self.status}>\n{self.result()!r}"

    def _repr_html_(self) -> str:
        return self.result()._repr_html_()


def _rung_state(rung: Rung) -> dict:
    return {"label": rung.label, "line": " ".join([rung.method] + ([rung.word] if rung.word else []) + rung.tokens),
            "status": rung.status, "reason": rung.reason, "run_ids": list(rung.run_ids), "records": rung.records}


def load_ladder(ladder_id: str) -> "LadderResult":
    """A recorded ladder redrawn from its file and its runs' records (after a restart)."""
    path = ladders_folder() / f"{ladder_id}.json"
    if not path.exists():
        known = sorted(p.stem for p in ladders_folder().glob("ladder-*.json"))
        raise UsageError(f"no recorded ladder {ladder_id!r}" + (f"; recorded: {', '.join(known[-5:])}" if known
                                                                 else " (%llm ladder records one)"))
    state = json.loads(path.read_text())
    store = RunStore(current().runs_path)
    rungs = []
    for rung in state["rungs"]:
        records = [r for r in (store.get(i) for i in rung["run_ids"]) if r and r.get("status") == "ok"]
        rungs.append({**rung, "records": records})
    options = state["options"]
    status = state["status"] if state["status"] in ("done", "stopped") else "interrupted"
    return LadderResult(state["id"], rungs, options["metric"], options["cost"], options["seeds"], status,
                        state.get("budget_s"))


# ---- the summary ----------------------------------------------------------------------------------

def train_seconds(record: dict) -> float:
    """A rung's training time: its run's wall time (test scoring included), none for a run that trains nothing."""
    return float(NO_TRAINING) if not record.get("trainable_params") else float(record.get("wall_s") or 0.0)


def latency_ms(record: dict) -> float:
    """Per-query latency where the run measures it: an inference-only run's wall time over its queries."""
    metrics = record.get("metrics") or {}
    if metrics.get("latency_ms") is not None:
        return float(metrics["latency_ms"])
    queries = metrics.get("queries")
    return 1000.0 * float(record.get("wall_s") or 0.0) / queries if queries else float("nan")


@dataclass
class RungSummary:
    label: str
    line: str
    status: str
    reason: str
    seeds: int
    score: stats.Interval | None          # t over seeds
    rows: stats.Interval | None           # bootstrap over test rows of the seed-averaged correctness
    correct: pd.Series | None             # per item, seed-averaged
    costs: dict[str, float]
    run_ids: list[str]

    @property
    def mean(self) -> float:
        return self.score.mean if self.score else float("nan")


def summarise(rung: dict, metric: str) -> RungSummary:
    records = rung["records"]
    summed = seeds.aggregate(records, list(range(len(records)))) if records else None   # one copy: runs/seeds.py
    score = summed.intervals.get(metric) if summed else None
    correct, rows = (summed.correct, summed.rows) if summed else (None, None)
    costs = {"train_s": float(np.mean([train_seconds(r) for r in records])) if records else float("nan"),
             "peak_mem_bytes": float(max((r.get("peak_mem_bytes") or 0) for r in records)) if records else float("nan"),
             "trainable_params": float(records[0].get("trainable_params") or 0) if records else float("nan"),
             "latency_ms": float(np.nanmean([latency_ms(r) for r in records]))
             if records and not all(np.isnan(latency_ms(r)) for r in records) else float("nan")}
    return RungSummary(rung["label"], rung["line"], rung["status"], rung["reason"], score.n if score else 0,
                       score, rows, correct, costs, list(rung["run_ids"]))


@dataclass(frozen=True)
class AgainstBest:
    difference: float                     # rung − best, in the metric's units
    low: float
    high: float
    p: float | None                       # exact McNemar (one seed: 0/1 correctness)
    paired: bool                          # False: compared by intervals only (no per-item predictions)
    below: bool                           # significantly below the best
    tested: bool = True                   # False: one seed and no per-item predictions, so no interval to test

    @property
    def within_noise(self) -> bool:
        return self.tested and not self.below


def against_best(rung: RungSummary, best: RungSummary) -> AgainstBest:
    """The paired test on the shared test rows when both kept per-item predictions, else the intervals' overlap."""
    if rung.correct is not None and best.correct is not None:
        try:
            left, right = stats.pair_items(rung.correct.rename("correct").reset_index(),
                                           best.correct.rename("correct").reset_index())
        except ValueError:
            left = right = np.array([])
        if len(left) >= 2:
            test = stats.paired_difference(left, right)
            d = test.difference
            # 0/1 correctness (one seed): the exact McNemar test decides, as the percentile bootstrap is too
            # eager with a handful of discordant rows; seed-averaged fractions: the paired interval decides.
            below = d.mean < 0 and (test.mcnemar_p < 1 - stats.CONFIDENCE if test.mcnemar_p is not None
                                    else d.high < 0)
            return AgainstBest(d.mean, d.low, d.high, test.mcnemar_p, True, below)
    mine, theirs = rung.rows or rung.score, best.rows or best.score
    difference = rung.mean - best.mean
    if mine.n < 2:   # one seed and no rows: a point, not an interval
        return AgainstBest(difference, float("nan"), float("nan"), None, False, False, tested=False)
    return AgainstBest(difference, float("nan"), float("nan"), None, False, mine.high < theirs.low)


class LadderResult:
    """The ladder's table, Pareto frontier, paired tests against the best and the recommendation."""

    def __init__(self, ladder_id: str, rungs: list[dict], metric: str, cost: str, seeds: int, status: str,
                 budget_s: float | None = None):
        self.id, self.metric, self.cost, self.seeds, self.status, self.budget_s = \
            ladder_id, metric, cost, seeds, status, budget_s
        self.rungs = [summarise(r, metric) for r in rungs]
        scored = [r for r in self.rungs if r.score is not None]
        self.best = max(scored, key=lambda r: r.mean) if scored else None
        self.tests = {r.label: against_best(r, self.best) for r in scored if r is not self.best}
        self.frontier = pareto([(r.label, r.costs[cost], r.mean) for r in scored])
        self.recommended = recommend(scored, self.best, self.tests, cost)

    # -- the table ------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        rows = []
        for r in self.rungs:
            test = self.tests.get(r.label)
            rows.append({
                "rung": r.label, "status": r.status, "seeds": r.seeds, self.metric: r.mean,
                "t low": r.score.low if r.score else np.nan, "t high": r.score.high if r.score else np.nan,
                "rows low": r.rows.low if r.rows else np.nan, "rows high": r.rows.high if r.rows else np.nan,
                "train s": r.costs["train_s"], "peak mem MB": r.costs["peak_mem_bytes"] / 2**20,
                "trainable": r.costs["trainable_params"], "latency ms": r.costs["latency_ms"],
                "vs best": ("best" if r is self.best else _vs_best(test) if test else ""),
                "frontier": r.label in self.frontier, "note": r.reason, "line": r.line})
        return pd.DataFrame(rows)

    @property
    def notes(self) -> list[str]:
        notes = []
        unpaired = [label for label, t in self.tests.items() if not t.paired]
        if unpaired:
            notes.append(f"{', '.join(unpaired)} kept no per-item predictions: compared with the best by their "
                         "intervals only (a paired test needs them; "
                         f"{predictions.KEPT_BY} keep them)")
        if any(np.isnan(r.costs["latency_ms"]) for r in self.rungs if r.score):
            notes.append("per-query latency is measured for inference-only rungs; a training rung's test pass is "
                         "not timed apart from its training (its train s includes it)")
        skipped = [f"{r.label}: {r.reason}" for r in self.rungs if r.reason]
        return notes + skipped

    @property
    def sentence(self) -> str:
        return recommendation_sentence(self)

    def plot_png(self) -> bytes | None:
        return frontier_plot(self)

    def __repr__(self) -> str:
        shown = self.table().drop(columns=["line"])
        return (f"<LadderResult {self.id}: {self.status}>\n{self.sentence}\n"
                + shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
                + "".join(f"\n- {n}" for n in self.notes))

    def _repr_html_(self) -> str:
        return ladder_html(self)


def _vs_best(test: AgainstBest) -> str:
    if not test.tested:
        return f"{100 * test.difference:+.1f} (no interval)"
    if not test.paired:
        return f"{100 * test.difference:+.1f} (intervals{', below' if test.below else ''})"
    p = f", p = {test.p:.2g}" if test.p is not None else ""
    return f"{100 * test.difference:+.1f} [{100 * test.low:+.1f}, {100 * test.high:+.1f}]{p}" \
        + (" below" if test.below else "")


def pareto(points: list[tuple[str, float, float]]) -> set[str]:
    """The labels no other point dominates (costs no more and scores at least as well, one of them strictly)."""
    def dominated(cost, score):
        return any(c <= cost and s >= score and (c < cost or s > score) for _, c, s in points)
    return {label for label, cost, score in points if not np.isnan(cost) and not dominated(cost, score)}


def recommend(scored: list[RungSummary], best: RungSummary | None, tests: dict[str, AgainstBest],
              cost: str) -> RungSummary | None:
    """The cheapest rung whose score is not significantly below the best (the best itself when none is)."""
    if best is None:
        return None
    near = [r for r in scored if r is best or tests[r.label].within_noise]
    return min(near, key=lambda r: (_cost_or_inf(r, cost), -r.mean))


def _cost_or_inf(rung: RungSummary, cost: str) -> float:
    value = rung.costs[cost]
    return float("inf") if np.isnan(value) else value


def recommendation_sentence(result: LadderResult) -> str:
    best, pick = result.best, result.recommended
    if best is None:
        return "no rung has finished yet: nothing to recommend"
    what = COSTS[result.cost]
    if pick is best:
        cheaper = [r for r in result.rungs if r.score and r is not best
                   and _cost_or_inf(r, result.cost) < _cost_or_inf(best, result.cost)]
        if not cheaper:
            return f"{best.label} is the best rung ({_points(best.mean)}) and also the cheapest in {what}"
        nearest = max(cheaper, key=lambda r: r.mean)
        return (f"{best.label} is the best rung ({_points(best.mean)}): no cheaper rung is shown to be within noise "
                f"of it (the nearest, {nearest.label}, is {_points(best.mean - nearest.mean)} points below, "
                f"{_evidence(result.tests[nearest.label])})")
    test = result.tests[pick.label]
    share = _cost_or_inf(pick, result.cost) / _cost_or_inf(best, result.cost) \
        if _cost_or_inf(best, result.cost) not in (0.0, float("inf")) else float("nan")
    at = "at no training cost" if result.cost == "train_s" and pick.costs["train_s"] == NO_TRAINING else \
        (f"at {100 * share:.0f} % of its {what}" if share == share else "")
    gap = best.mean - pick.mean
    return (f"{pick.label} is within {_points(gap)} points of {best.label} ({_evidence(test)}) {at}").rstrip()


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _evidence(test: AgainstBest) -> str:
    if not test.tested:
        return "one seed and no per-item predictions: no interval to test"
    if not test.paired:
        return "compared by intervals only: no per-item predictions"
    if test.p is not None:
        return f"p = {test.p:.2g}"
    return f"paired 95 % CI {100 * test.low:+.1f} to {100 * test.high:+.1f} points"


# ---- views --------------------------------------------------------------------------------------

def frontier_plot(result: LadderResult) -> bytes | None:
    """Quality against the cost: frontier rungs joined by a line, dominated ones grey, whiskers the intervals."""
    points = [r for r in result.rungs if r.score is not None and not np.isnan(r.costs[result.cost])]
    if not points:
        return None
    from ..runs.figures import new_figure, to_png
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    scale = 2**20 if result.cost == "peak_mem_bytes" else 1.0
    for r in points:
        on = r.label in result.frontier
        interval = r.rows or r.score
        x, y = r.costs[result.cost] / scale, r.mean
        colour = "C0" if on else "0.7"
        ax.errorbar([x], [y], yerr=[[y - interval.low], [interval.high - y]], fmt="o", color=colour, capsize=3,
                    markersize=7 if r is result.recommended else 5)
        ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8,
                    color="black" if on else "0.55")
    line = sorted((r.costs[result.cost] / scale, r.mean) for r in points if r.label in result.frontier)
    if len(line) > 1:
        ax.plot(*zip(*line), "-", color="C0", alpha=0.6)
    ax.set_xlabel(COSTS[result.cost] + (" (MB)" if scale != 1.0 else ""))
    ax.set_ylabel(result.metric)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.15)
    ax.set_title("Pareto frontier (blue); dominated rungs grey; whiskers: 95 % interval", fontsize=9)
    return to_png(fig)


def ladder_html(result: LadderResult, running: str | None = None) -> str:
    """The table (one row per rung, filling in), the recommendation, the notes and the plot."""
    table = result.table()
    head = ["rung", "status", "seeds", result.metric, "± t (seeds)", "± rows", "train", "peak MB", "trainable",
            "ms/query", "vs best (points)", "frontier"]
    cells = "".join(f"<th style='padding:2px 8px;text-align:left'>{html.escape(h)}</th>" for h in head)
    rows = []
    for _, row in table.iterrows():
        best = result.best is not None and row["rung"] == result.best.label
        dominated = not row["frontier"] and row[result.metric] == row[result.metric]
        style = BEST_ROW if best else (f"color:{FAINT}" if dominated else "")
        status = str(row["status"]) if row["rung"] != running else "running"
        values = [html.escape(row["rung"]), f"<span style='color:{status_colour(status)}'>{html.escape(status)}</span>",
                  str(row["seeds"]), _num(row[result.metric], 3), _half(row["t low"], row["t high"]),
                  _half(row["rows low"], row["rows high"]),
                  format_seconds(row["train s"]) if row["train s"] == row["train s"] else "",
                  _num(row["peak mem MB"], 0), _num(row["trainable"], 0), _num(row["latency ms"], 1),
                  html.escape(str(row["vs best"])), "✓" if row["frontier"] else ("dominated" if dominated else "")]
        title = html.escape(f"{row['line']}" + (f" — {row['note']}" if row["note"] else ""))
        rows.append(f"<tr title='{title}' style='{style}'>"
                    + "".join(f"<td style='padding:2px 8px;white-space:nowrap'>{v}</td>" for v in values) + "</tr>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    png = result.plot_png() if result.best is not None else None
    from ..runs.figures import png_html
    plot = scroll_box(png_html(png, alt="the ladder's Pareto frontier")) if png else ""
    return (f"<div class='llm-magics-ladder' style='font-family:sans-serif;font-size:13px'>"
            f"<b>ladder <code>{html.escape(result.id)}</code></b> · {html.escape(result.status)}"
            f"<div><b>{html.escape(result.sentence)}</b></div>"
            + scroll_box(f"<table style='border-collapse:collapse'><tr>{cells}</tr>{''.join(rows)}</table>")
            + (f"<ul style='color:{WARN};margin:2px 0'>{notes}</ul>" if notes else "") + plot + "</div>")


def _num(value, digits: int) -> str:
    return "" if value != value else f"{value:,.{digits}f}"


def _half(low, high) -> str:
    return "" if low != low else f"± {(high - low) / 2:.3f}"


class TextLadderView:
    """Without widgets: one line per rung as it ends, the whole result at the end."""

    def __init__(self, ladder: Ladder, stream=None):
        self.ladder, self.stream, self._said = ladder, stream, set()
        ladder.on_update.append(self.update)

    def update(self, ladder: Ladder) -> None:
        out = self.stream or sys.stdout
        for rung in ladder.rungs:
            if rung.status in ("waiting", "running") or rung.label in self._said:
                continue
            self._said.add(rung.label)
            score = summarise(_rung_state(rung), ladder.options.metric).score
            said = rung.reason if rung.reason.startswith(rung.status) else \
                rung.status + (f" ({rung.reason})" if rung.reason else "")   # a skip's reason says 'skipped' itself
            print(f"[{ladder.id}] {rung.label}: {said}" + (f" {ladder.options.metric}={score}" if score else ""),
                  file=out, flush=True)
        if ladder.finished and "__end__" not in self._said:
            self._said.add("__end__")
            print(f"[{ladder.id}] {ladder.result().sentence}", file=out, flush=True)


class LadderView:
    """The widget: the current run's live view, one Stop for the whole ladder, the table filling in, the plot."""

    def __init__(self, ladder: Ladder):
        import ipywidgets as widgets

        from ..progress.widget import Snapshot
        from .view import attach
        self.ladder, self._attach = ladder, attach
        self.live = widgets.HTML()
        self.board = widgets.HTML(ladder_html(ladder.result()))
        self.stop_button = widgets.Button(description="Stop ladder", button_style="danger", icon="stop",
                                          tooltip="end the current run cleanly and skip the rest")
        self.stop_button.on_click(self._stop)
        self.widget = widgets.VBox([self.stop_button, self.live, self.board])
        self.widget.add_class("llm-magics-ladder")
        self.snapshot = Snapshot(self.snapshot_html)
        ladder.on_run.append(lambda handle: self._attach(handle.progress, self.live))
        ladder.on_update.append(self.update)

    def _stop(self, _button=None) -> None:
        self.ladder.stop()
        self.stop_button.disabled, self.stop_button.description = True, "Stopping…"

    def update(self, ladder: Ladder) -> None:
        running = next((r.label for r in ladder.rungs if r.status == "running"), None)
        self.board.value = ladder_html(ladder.result(), running)
        if ladder.finished:
            self.stop_button.disabled = True
            self.stop_button.description = "Ladder stopped" if ladder.stopping else "Ladder done"
            self.live.value = ""
        self.snapshot.refresh(now=ladder.finished)

    def snapshot_html(self) -> str:
        return ("" if self.ladder.finished else self.live.value) + self.board.value

    def _ipython_display_(self) -> None:
        self.snapshot.display(self.widget)


# ---- the command --------------------------------------------------------------------------------

def from_line(tokens: list[str], namespace: dict | None = None, progress_mode: str | None = None) -> Ladder:
    options = opts.parse_line(LadderOptions, tokens, "llm ladder")
    return Ladder(options, namespace, progress_mode=progress_mode)


def ladder_magic(shell, tokens: list[str]):
    """`%llm ladder --data D --test T [--budget 20m] [--seeds 3] [--rungs "..."] [--out NAME]`: started at once,
    shown as a live table (widgets) or one line per rung (text)."""
    from ..progress import in_kernel
    try:
        import ipywidgets  # noqa: F401
        widgets = in_kernel()
    except ImportError:
        widgets = False
    namespace = shell.user_ns if shell else {}
    ladder = from_line(tokens, namespace, progress_mode="none" if widgets else None)
    view = LadderView(ladder) if widgets else TextLadderView(ladder)
    ladder.start()
    if ladder.options.out:
        namespace[ladder.options.out] = ladder
    return view if widgets else (None if ladder.options.out else ladder)
