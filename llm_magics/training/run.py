"""`TrainingMethod`, the one run every trainer shares, and its hooks: `run()` goes device, dtype, model
source, --resume, data, checks, live view (`start`), then model and task (`prepare`), the plan, train,
Result, hold and the live view's end. A method overrides only the hooks that make it itself."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from .. import options as opts
from ..engine import checkpoint
from ..engine.device import pick_dtype, train_dtype
from ..engine.loop import Outcome, TrainLoop
from ..errors import UsageError
from ..method import Method
from ..models import hold, load_model, resolve, trainable
from ..models.classifier import SequenceClassifier
from ..progress.events import Progress
from ..tasks.causal_lm import require_decoder, sft_task
from ..tasks.classify import TokenTask
from .head import prepare_head_only
from .options import (TRAINING_RESUME_KEYS, CausalLMTrainingOptions, ClassifierTrainingOptions, ParamGroup, Phase,
                      Predicate)
from .phases import carry_weights, check_phases, copy_earlier_phases, save_phase_weights
from .result import TrainedResult, close_run, training_result
from .resume import check_resumable, find_checkpoint, resumed_phase, save_run_options
from .steps import TrainingRun, classifier, describe_run, prepare_data, train_config


class TrainingMethod(Method):
    """A method that trains a model on the engine. Options must include the model, data,
    run and training bundles (and `task`, or set the class's `task`)."""
    task: ClassVar[str | None] = None          # classify | sft; None: the `--task` option decides
    default_lr: ClassVar[float] = 5e-5
    resume_keys: ClassVar[tuple[str, ...]] = TRAINING_RESUME_KEYS
    result_class: ClassVar[type[TrainedResult]] = TrainedResult
    launchable: ClassVar[bool] = True    # run() takes --devices/--nodes (llm_magics.launch)
    model_option: ClassVar[str] = "model"   # the option naming the model that trains
    run_class: ClassVar[type[TrainingRun]] = TrainingRun   # a subclass adds the state a method's hooks share
    # --seed is set before each random draw: the split (data/), the head (steps.classifier), the loop's generator
    seed_controls: ClassVar[tuple[str, ...]] = ("data split", "data order", "head init", "dropout")

    def __init_subclass__(cls, **kwargs):
        # A run of several phases runs in one process: --devices is refused in one line (runner.one_process)
        super().__init_subclass__(**kwargs)
        if cls.phases is not TrainingMethod.phases:
            cls.launchable = False

    # -- hooks ----------------------------------------------------------------------------
    def select_trainable(self, model: torch.nn.Module, options) -> Predicate | None:
        """Which parameters train; None keeps the model's own requires_grad (all, for a fresh model)."""
        return None

    def peak_lr(self, options) -> float:
        return options.lr or self.default_lr

    def param_groups(self, model: torch.nn.Module, options) -> list[ParamGroup] | None:
        return None

    def title(self, options, source) -> str:
        return f"{self.name} · {source.short} · {self.task_of(options)}"

    def plan_label(self, options) -> str:
        return self.name

    def resume_values(self, options) -> dict[str, Any]:
        values = {k: v for k, v in opts.as_dict(options).items() if k in self.resume_keys}
        values["lr"] = self.peak_lr(options)
        return values

    def prepare_data(self, run: TrainingRun) -> None:
        """Set `run.data` (and start `run.notes` with its notes): the shared --data/--validation/--test."""
        run.data = prepare_data(run.options, run.ctx, run.task)
        run.notes = list(run.data.notes)

    def check(self, run: TrainingRun) -> None:
        """Refuse what cannot run, before anything loads (after the data)."""

    def load_dtype(self, run: TrainingRun, frozen: bool) -> torch.dtype:
        """The dtype a run's model loads in: a base that does not train (under an adapter, or below a head) in
        `pick_dtype`'s (bf16 on a CPU that does it natively, and on a GPU), weights that train in fp32 (autocast
        computes in a lower one)."""
        return pick_dtype(run.device, run.options.dtype) if frozen else torch.float32

    def loaded_in(self, run: TrainingRun, dtype: torch.dtype) -> None:
        """What the run's passes compute in, its model loaded in `dtype`: `train_dtype`'s one rule (a bf16
        frozen base computes under bf16 autocast)."""
        run.autocast = train_dtype(run.device, run.options.dtype, frozen=dtype)

    def prepare(self, run: TrainingRun) -> None:
        """Set run.model, run.tokenizer, run.engine_task (and run.plan, or the base reports it)."""
        o = run.options
        if run.task == "sft":
            loaded = load_model(run.source, "causal_lm", run.device, torch.float32, fresh=True,
                                trust_remote_code=o.trust_remote_code)
            require_decoder(loaded, run.source)
            run.loaded, run.model, run.tokenizer = loaded, loaded.model, loaded.tokenizer
            run.engine_task = sft_task(run.data, loaded.tokenizer, o, run.device, run.notes)
        else:
            loaded = load_model(run.source, "base", run.device, torch.float32, fresh=True,
                                trust_remote_code=o.trust_remote_code)
            run.loaded, run.model, run.tokenizer = loaded, classifier(loaded, run.data, o, run.device), loaded.tokenizer
            run.engine_task = TokenTask(run.data, loaded.tokenizer, o.max_length, run.device, notes=run.notes)
        self.apply_selection(run)

    def apply_selection(self, run: TrainingRun) -> None:
        """Freeze what `select_trainable` leaves out (a classifier's head always trains); report it."""
        take = self.select_trainable(run.model, run.options)
        if take is not None:
            head = {id(p) for p in run.model.head.parameters()} if isinstance(run.model, SequenceClassifier) else set()
            for name, param in run.model.named_parameters():
                param.requires_grad = bool(id(param) in head or take(name, param))
        if not any(p.requires_grad for p in run.model.parameters()):
            raise UsageError(f"%{self.name}: nothing to train — every parameter is frozen")
        run.plan = run.plan or trainable.report(run.model, self.plan_label(run.options))

    def finish(self, run: TrainingRun, result: TrainedResult) -> None:
        """After training, before the live view ends: hold the model so `%llm free` can release it."""
        hold(result)

    def end_metrics(self, result) -> dict[str, float]:
        """What the live view shows as it ends: the test metrics."""
        return {k: v for k, v in result.metrics.items() if k.startswith("test_")}

    # -- the run ---------------------------------------------------------------------------
    def task_of(self, options) -> str:
        return self.task or getattr(options, "task", "classify")

    def run(self, o, ctx) -> TrainedResult:
        run = self.start(o, ctx)
        phases = self.phases(o)
        check_phases(phases)
        resumed = run.resume_dir is not None
        first = resumed_phase(run.resume_dir) if resumed and len(phases) > 1 else 0
        if first:
            copy_earlier_phases(run.resume_dir.parent, ctx.run_dir)
        for index in range(first, len(phases)):
            if index > first:   # the same live view, data and run folder; a fresh state, no checkpoint to resume
                run = self.run_class(o, ctx, run.task, run.device, run.source, run.data, notes=run.notes,
                                     progress=run.progress, autocast=run.autocast)
            if len(phases) > 1:
                run.progress.phase(f"{self.title(o, run.source)} · {phases[index].name}")
            self.enter_phase(run, phases, index)
            if run.answer is not None:   # the method answered without training (e.g. %rlhf ppo --probe-reward)
                return run.answer
            if hasattr(o, "resume"):   # what --resume must find unchanged: the user's options; and the phase
                save_run_options(ctx.run_dir, {**self.resume_values(o), **run.run_options}, run.data.fingerprint,
                                 phase=index)
            describe_run(ctx, run.progress, run.plan)
            outcome = self.train(run)
            if outcome.status != "ok":   # Stop ends the whole run: the phases after this one do not start
                break
            if index + 1 < len(phases):
                save_phase_weights(run.model, ctx.run_dir, index, phases[index])
                shutil.rmtree(ctx.run_dir / "checkpoint-best", ignore_errors=True)   # the next phase keeps its own
        if len(phases) > 1:
            run.notes.append(phase_note(phases, first if resumed else None, index, outcome.status))
        result = self.build_result(run, outcome)
        self.finish(run, result)
        return close_run(result, ctx, outcome, self.end_metrics(result))

    def phases(self, options) -> list[Phase]:
        """The phases one run trains in, in order; each starts from the weights the ones before it trained.
        Default: one phase with the user's options. A method of several phases is not launchable."""
        return [Phase("train")]

    def enter_phase(self, run: TrainingRun, phases: list[Phase], index: int) -> None:
        """Phase `index`'s options, model and task: `prepare` (or the head-only fast path), then the earlier
        phases' weights."""
        phase = phases[index]
        if phase.options:
            run.options = replace(run.options, **phase.options)
        if phase.head_only and run.task == "classify":
            prepare_head_only(run, f"{self.plan_label(run.options)} · {phase.name}: the head")
        else:
            self.prepare(run)
        if index and run.answer is None:
            run.carried = carry_weights(run.model, run.ctx.run_dir, phases, index)

    def start(self, o, ctx) -> TrainingRun:
        """Device, dtype, model source, --resume, data and checks; the live view: all before anything loads."""
        run = self.run_class(o, ctx, self.task_of(o), ctx.device(o.device), resolve(getattr(o, self.model_option)),
                             None)
        run.autocast = train_dtype(run.device, o.dtype)   # a dtype the device cannot train in: refused here
        resume = getattr(o, "resume", None)
        run.resume_dir = find_checkpoint(resume, ctx) if resume else None
        self.prepare_data(run)
        if run.resume_dir:
            check_resumable(run.resume_dir, self.resume_values(o), run.data.fingerprint)
        self.check(run)
        run.progress = ctx.progress(self.title(o, run.source))
        return run

    def train(self, run: TrainingRun) -> Outcome:
        """Train `run.model` on `run.engine_task`: the engine's loop (a launched worker's context names its
        data-parallel loop, engine/distributed.py). A method may put another trainer (TRL's) here."""
        o = run.options
        config = train_config(o, run.autocast, self.peak_lr(o), run.task, run.group_by_length,
                              self.param_groups(run.model, o))
        loop_class = run.ctx.train_loop or TrainLoop
        loop = loop_class(run.model, run.engine_task, config, run.progress, run.ctx.run_dir, run.device,
                          **run.loop_hooks)
        if run.resume_dir:
            loop.resume(run.resume_dir)
        return loop.run()

    def build_result(self, run: TrainingRun, outcome: Outcome) -> TrainedResult:
        return training_result(self.result_class, run, outcome)

    def restore_model(self, o, ctx, weights: Path):
        """(model, tokenizer) built as `prepare` builds them, on the CPU, with the trained `weights` loaded: how
        the kernel's Result of a launched run gets its model on first use (the workers trained it)."""
        run = self.run_class(o, ctx, self.task_of(o), torch.device("cpu"), resolve(getattr(o, self.model_option)),
                             None)
        self.prepare_data(run)
        run.progress = Progress()   # silent: the run's live view has ended
        self.prepare(run)
        checkpoint.load_weights(run.model, weights)
        run.model.eval()
        return run.model, run.tokenizer


def phase_note(phases: list[Phase], resumed: int | None, last: int, status: str) -> str:
    """Which phases this run trained: from the one it resumed in (if it resumed) to the one it ended in."""
    ran = ", ".join(p.name for p in phases[resumed or 0:last + 1])
    note = f"phases {ran}" + (f" (resumed in {phases[resumed].name})" if resumed is not None else "")
    if status == "stopped":
        note += f"; stopped in {phases[last].name}: --resume continues it, then the phases after it"
    return note


class ClassifierTrainingMethod(TrainingMethod):
    """Trains a pooled classifier (a new head on the model) on labelled texts."""
    task = "classify"
    Options = ClassifierTrainingOptions


class CausalLMTrainingMethod(TrainingMethod):
    """Instruction-tunes a causal LM on prompt/response pairs or chat messages."""
    task = "sft"
    Options = CausalLMTrainingOptions

