"""The public base of training methods: `%finetune`, `%lora` and plugins build on it.

A training method subclasses `ClassifierTrainingMethod` (a pooled classifier on an
encoder or a decoder), `CausalLMTrainingMethod` (instruction tuning of a causal LM,
loss on responses only) or `TrainingMethod` (either, chosen by the `--task` option),
and overrides only what makes it itself:

    class BitFit(ClassifierTrainingMethod):
        name = "bitfit"
        default_lr = 1e-3
        Options = ClassifierTrainingOptions

        def select_trainable(self, model, options):
            return lambda name, param: name.endswith("bias")

`run()` does the whole set-up: the data (the shared `--data/--validation/--test`
options), the model (fp32, a fresh copy the run may change), which parameters
train, `hold()` (so `%llm free` releases it), the live progress and its end,
`--resume`, the engine (`engine.loop.TrainLoop`), and the Result — a
`TrainedResult` that predicts or generates with the trained model.

Hooks, each optional:

- `select_trainable(model, options)` → a predicate `(name, param) → bool`, or None
  to keep what the model says. A classifier's new head always trains.
- `default_lr` (class attribute) or `peak_lr(options)`: the learning rate when
  the user gives no `--lr`.
- `param_groups(model, options)` → `[(name, predicate, lr), ...]`: per-group
  peak learning rates (the rest trains at the peak lr).
- `resume_keys`: the options that must match for `--resume` to continue a run.
- `title(options, source)`, `plan_label(options)`: what the live view says.
- `prepare_data(run)`: the data (default: the shared data options).
- `prepare(run)`: build the model, tokenizer and engine task yourself (`%lora`
  wraps the base with an adapter here); `finish(run, result)`: after training.
- `train(run) -> Outcome`: the trainer (default: the engine's loop).
- `build_result(run, outcome)`: the Result (default: `training_result`).
"""
from __future__ import annotations

import ctypes
import gc
import json
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import pandas as pd
import torch

from . import options as opts
from .common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions, run_to_resume
from .data import prepare_classification
from .data.sft import prepare_sft
from .engine import checkpoint
from .engine.device import compute_dtype, train_dtype
from .engine.features import POOLINGS, default_pooling
from .engine.rng import seeded
from .engine.loop import Outcome, TrainConfig, TrainLoop
from .errors import UsageError
from .method import Method, Result
from .models import cached, hold, load_model, resolve, trainable
from .models.classifier import SequenceClassifier
from .options import option
from .progress import in_kernel
from .runs.figures import new_figure, to_png
from .tasks.causal_lm import generate, require_decoder, sft_task
from .tasks.classify import TokenTask, predict_logits

__all__ = ["TrainingMethod", "ClassifierTrainingMethod", "CausalLMTrainingMethod", "TrainingRun",
           "ClassificationOptions", "SftOptions", "TaskOptions", "ClassifierTrainingOptions",
           "CausalLMTrainingOptions", "TrainedResult", "TrainConfig", "Outcome", "TRAINING_RESUME_KEYS",
           "training_result", "result_fields", "prepare_data", "train_config", "describe_run", "close_run",
           "plot_history",
           "find_checkpoint", "check_resumable", "save_run_options", "Predicate", "ParamGroup"]

Predicate = Callable[[str, torch.nn.Parameter], bool]
ParamGroup = tuple[str, Predicate, float]     # (name, which parameters, peak learning rate)

# Options of the shared bundles that must match for --resume to continue the same run.
TRAINING_RESUME_KEYS = ("model", "task", "pooling", "epochs", "lr", "batch_size", "grad_accum", "seed",
                        "scheduler", "warmup", "max_length", "weight_decay", "max_grad_norm", "eval_every")


# ---- option bundles -------------------------------------------------------------------

@dataclass
class ClassificationOptions:
    pooling: str = option("auto", "classify: how token states become one vector (auto: mean for encoders, "
                                  "last token for decoders)", choices=("auto",) + POOLINGS,
                          applies=opts.when("task", "classify"))
    head_dropout: float = option(0.1, "classify: dropout before the classification head", check=opts.dropout_rate,
                                 applies=opts.when("task", "classify"))


@dataclass
class SftOptions:
    prompt: str | None = option(None, "sft: the prompt column (default: inferred)", metavar="COLUMN",
                                applies=opts.when("task", "sft"))
    response: str | None = option(None, "sft: the response column (default: inferred)", metavar="COLUMN",
                                  applies=opts.when("task", "sft"))
    messages: str | None = option(None, "sft: a column of chat messages [{role, content}] instead of "
                                        "prompt/response", metavar="COLUMN", applies=opts.when("task", "sft"))


@dataclass
class TaskOptions(ClassificationOptions, SftOptions):
    task: str = option("classify", "classify (a label per text) or sft (a causal LM learns responses)",
                       choices=("classify", "sft"))

    def validate(self) -> None:
        if self.task == "classify" and (self.prompt or self.response or self.messages):
            raise UsageError("--prompt/--response/--messages are for --task sft; classification uses --text/--label")


@dataclass
class ClassifierTrainingOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, ClassificationOptions):
    """Everything a `ClassifierTrainingMethod` reads: model, data, run, training, classification."""


@dataclass
class CausalLMTrainingOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, SftOptions):
    """Everything a `CausalLMTrainingMethod` reads: model, data, run, training, sft columns."""


# ---- the pieces run() is made of (public for methods that assemble their own) ---------

def prepare_data(o, ctx, task: str):
    """TaskData (classify) or SftData (sft), from the shared data options."""
    if task == "classify":
        return prepare_classification(o.data, o.validation, o.test, text=o.text, label=o.label, seed=o.seed,
                                      val_size=o.val_size, test_size=o.test_size, namespace=ctx.namespace)
    return prepare_sft(o.data, o.validation, o.test, prompt=o.prompt, response=o.response, messages=o.messages,
                       seed=o.seed, val_size=o.val_size, namespace=ctx.namespace)


def train_config(o, device: torch.device, lr: float, task: str, group_by_length: bool = True,
                 param_groups: list[ParamGroup] | None = None) -> TrainConfig:
    """The engine's configuration from the training options."""
    classify = task == "classify"
    return TrainConfig(epochs=o.epochs, lr=lr, batch_size=o.batch_size, grad_accum=o.grad_accum,
                       max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                       scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                       best_metric="val_accuracy" if classify else "val_loss", greater_is_better=classify,
                       seed=o.seed, autocast=train_dtype(device, o.dtype),
                       group_by_length=group_by_length, param_groups=tuple(param_groups or ()))


def describe_run(ctx, progress, plan) -> None:
    """What trains, in the live view before the first step; and, for a foreground run in a
    notebook (which can't take button clicks while it runs), how to stop it."""
    hint = ""
    if not ctx.background and in_kernel():
        hint = ("to stop cleanly, interrupt the kernel (■): the best checkpoint is kept; "
                "--bg runs in the background with a Stop button")
    progress.describe(plan.line(), hint)


def save_run_options(folder: Path, values: dict[str, Any], fingerprint: str) -> None:
    (folder / "run_options.json").write_text(json.dumps({"options": values, "data_fingerprint": fingerprint}))


def find_checkpoint(spec: str, ctx) -> Path:
    runs = ctx.settings.subdir("runs")
    if spec == "last":
        candidates = sorted((p for p in runs.glob(f"{ctx.method}-*/checkpoint-last") if checkpoint.exists(p)),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UsageError(f"--resume last: no stopped or crashed {ctx.method} run has a checkpoint to resume")
        return checkpoint.resumable(candidates[-1], "--resume last")   # whole, once (engine/checkpoint.py)
    folder = runs / spec / "checkpoint-last"
    problem = run_to_resume(spec)   # the option's check, again for callers that skip the parser
    if problem or not folder.resolve().is_relative_to(runs.resolve()):   # nothing outside the runs folder
        raise UsageError(f"--resume: {problem or f'{spec!r} leads out of the runs folder; name a run id'}")
    if not checkpoint.exists(folder):
        checkpoint.refuse_continued(folder, f"--resume {spec}")
        known = sorted(p.parent.name for p in runs.glob("*/checkpoint-last") if checkpoint.exists(p))
        raise UsageError(f"--resume {spec}: no resumable checkpoint for that run"
                         + (f"; resumable: {', '.join(known)}" if known else "; no run has one"))
    return checkpoint.resumable(folder, f"--resume {spec}")


def check_resumable(folder: Path, values: dict[str, Any], fingerprint: str) -> None:
    saved = checkpoint.run_options(folder.parent)
    if saved["data_fingerprint"] != fingerprint:
        raise UsageError("--resume: the data differ from the interrupted run's; pass the same --data/--validation/--test")
    changed = [f"--{k.replace('_', '-')} {saved['options'].get(k)!r} (now {v!r})"
               for k, v in values.items() if saved["options"].get(k) != v]
    if changed:
        raise UsageError("--resume continues the same run; these options differ from it: " + "; ".join(changed))


def saved_run_options(resume_dir: Path) -> dict[str, Any]:
    return json.loads((resume_dir.parent / "run_options.json").read_text())["options"]


# ---- the Result ------------------------------------------------------------------------

@dataclass(repr=False)
class TrainedResult(Result):
    """Predicts (classify) or generates (sft) with the trained model; `.save(path)` writes it."""
    task: str = "classify"
    history: pd.DataFrame | None = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _max_length: int = 256
    _weights: "TrainedWeights | None" = field(default=None, repr=False)

    def _need_model(self):
        """The trained model: in memory, or built again from the weights on disk (`TrainedWeights`)."""
        if self._model is None and self._weights is not None:
            with _LOADED_LOCK:
                if self._model is None:
                    self._model = self._weights.build()
        if self._model is None:
            raise RuntimeError("the model was released (%llm free); run again or load a saved copy")
        if self._weights is not None:
            keep_loaded(self)
        return self._model

    def logits(self, texts) -> torch.Tensor:
        """Raw classification logits, in the texts' order."""
        if self.task != "classify":
            raise TypeError("this run tuned a causal LM: use .generate(prompts)")
        texts = [texts] if isinstance(texts, str) else list(texts)
        model = self._need_model()
        return predict_logits(model, self._tokenizer, texts, self._max_length, next(model.parameters()).device)

    def predict(self, texts) -> list[str]:
        return [self.label_names[i] for i in self.logits(texts).argmax(-1).tolist()]

    def predict_proba(self, texts) -> pd.DataFrame:
        return pd.DataFrame(self.logits(texts).softmax(-1).numpy(), columns=self.label_names)

    def generate(self, prompts, max_new_tokens: int = 64, **kwargs):
        if self.task != "sft":
            raise TypeError("this run trained a classifier: use .predict(texts)")
        return generate(self._need_model(), self._tokenizer, prompts, max_new_tokens, **kwargs)

    def save(self, path: str | Path) -> Path:
        """The whole trained model as safetensors (+ tokenizer), loadable with from_pretrained."""
        model, folder = self._need_model(), Path(path).expanduser()
        if isinstance(model, SequenceClassifier):
            model.save(folder, self._tokenizer, self.label_names)
        else:
            model.save_pretrained(folder, safe_serialization=True)
            self._tokenizer.save_pretrained(folder)
        self.artifacts["saved"] = str(folder)
        return folder

    def release(self) -> None:
        """Drop the model from memory (`%llm free`); a Result whose weights are on disk loads them
        again when it next predicts."""
        self._model = None


# ---- trained weights stay on disk: a kept Result does not pin a model ------------------------------
KEEP_LOADED = 2   # trained models kept in memory across Results; older ones are built again from disk on use
_LOADED: "OrderedDict[int, weakref.ref]" = OrderedDict()
_LOADED_LOCK = threading.RLock()


@dataclass
class TrainedWeights:
    """How a training Result builds its model again: the base as the run loaded it (the session's
    shared copy when the run trained on it frozen), the classification head around it, then the
    trained weights from `folder` (checkpoint-best, or trained/), checked as every checkpoint is."""
    source: Any
    head: str
    device: str
    dtype: torch.dtype
    shared: bool
    folder: Path
    classifier: tuple[int, str, float] | None = None   # labels, pooling, dropout
    trust_remote_code: bool = False

    def build(self):
        loaded = load_model(self.source, self.head, torch.device(self.device), self.dtype, fresh=not self.shared,
                            trust_remote_code=self.trust_remote_code)
        model = loaded.model
        if self.classifier is not None:
            labels, pooling, dropout = self.classifier
            model = SequenceClassifier(loaded.model, labels, pooling, dropout).to(loaded.device)
            model.head.float()
        checkpoint.load_weights(model, self.folder, todo="the trained weights cannot be loaded again; train the "
                                                          "run again")
        model.eval()
        return model


def keep_loaded(result: "TrainedResult") -> None:
    """`result` was just used: keep its model; release the least recently used beyond KEEP_LOADED."""
    evicted = False
    with _LOADED_LOCK:
        _LOADED.pop(id(result), None)
        _LOADED[id(result)] = weakref.ref(result)
        while len(_LOADED) > KEEP_LOADED:
            _, ref = _LOADED.popitem(last=False)
            old = ref()
            if old is not None and old._weights is not None and old._model is not None:
                old._model, evicted = None, True
    if evicted:
        _return_memory()


def _return_memory() -> None:
    gc.collect()
    try:   # glibc keeps freed heap pages; give them back so the process's memory falls
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def trained_weights(run: "TrainingRun", outcome: Outcome, model) -> TrainedWeights | None:
    """Where the trained model can be rebuilt from, writing its trainable weights when no checkpoint
    holds them; None when this model cannot be rebuilt that way (the Result keeps it in memory)."""
    loaded = run.loaded
    if loaded is None or run.loop_hooks.get("weights_state") is not None \
            or getattr(loaded.model, "hf_quantizer", None) is not None:
        return None
    if isinstance(model, SequenceClassifier) and model.base is loaded.model:
        head = (model.head.out_features, model.pooling, float(model.dropout.p))
    elif model is loaded.model:
        head = None
    else:
        return None
    folder = outcome.weights
    if folder is None:
        folder = checkpoint.save_weights(model, run.ctx.run_dir / "trained").parent
    return TrainedWeights(loaded.source, loaded.head, str(loaded.device), loaded.dtype,
                          shared=any(c is loaded for c in cached()), folder=Path(folder), classifier=head,
                          trust_remote_code=bool(getattr(run.options, "trust_remote_code", False)))


def _has_split(task, split: str) -> bool:
    for attribute in ("rows", "ids", "x"):
        holder = getattr(task, attribute, None)
        if isinstance(holder, dict) and holder.get(split) is not None and len(holder[split]):
            return True
    return False


def training_result(result_cls: type[TrainedResult], run: "TrainingRun", outcome: Outcome,
                    **extra) -> TrainedResult:
    """The one place a training Result is built: metrics (the restored best weights scored on
    validation and test, the last train loss), what trained, history, curves, artifacts,
    throughput. `extra` sets fields of `result_cls` (and may add artifacts)."""
    o, ctx, model, task = run.options, run.ctx, run.model, run.engine_task
    metrics: dict[str, float] = {}
    metrics.update(task.split_scores(model, "val"))
    if run.task == "sft" and outcome.history and "val_loss" in outcome.history[0]:
        metrics["val_loss_before"] = outcome.history[0]["val_loss"]
    if _has_split(task, "test"):
        metrics.update(task.split_scores(model, "test"))
    if outcome.losses:
        metrics["train_loss"] = float(outcome.losses[-1][1])
    metrics["epochs"] = round(outcome.epochs_run, 3)
    metrics["steps"] = outcome.steps
    fields = result_fields(run, outcome, model)
    artifacts = {**fields["artifacts"], **extra.pop("artifacts", {})}
    if checkpoint.has_weights(ctx.run_dir / "checkpoint-best"):
        artifacts["best_checkpoint"] = str(ctx.run_dir / "checkpoint-best")
    if checkpoint.exists(ctx.run_dir / "checkpoint-last"):
        artifacts["resume_checkpoint"] = str(ctx.run_dir / "checkpoint-last")
    fields.update(metrics=metrics, artifacts=artifacts, label_names=getattr(run.data, "label_names", None),
                  task=run.task, _model=model, _tokenizer=run.tokenizer, _max_length=o.max_length)
    fields.update(extra)
    if result_cls._need_model is TrainedResult._need_model and "_model" not in extra:
        # Issue 9 item 16: the weights stay on disk; the newest Results keep their model loaded.
        fields["_weights"] = trained_weights(run, outcome, model)
    result = result_cls(**fields)
    if result._weights is not None:
        keep_loaded(result)
    return result


def result_fields(run: "TrainingRun", outcome: Outcome, model) -> dict[str, Any]:
    """What every training Result says of its run (any Result class): model, data, device, the dtype it
    computed in, status, what trained, history and its curves, notes, throughput, the run folder."""
    history = pd.DataFrame(outcome.history)
    tables = {"trainable parameters": run.plan.groups}
    if len(history):
        tables["history"] = history
    dtype, dtype_notes = compute_dtype(next(model.parameters()).dtype, run.autocast)
    return dict(method=run.ctx.method, model=run.source.short, data_fingerprint=run.data.fingerprint,
                device=str(run.device), dtype=dtype, status=outcome.status, history=history,
                trainable_params=run.plan.trainable, total_params=run.plan.total, tables=tables,
                figures={"training curves": plot_history(history, outcome.losses)} if len(history) else {},
                artifacts={"run_dir": str(run.ctx.run_dir)},
                notes=run.notes + outcome.notes + run.plan.notes + dtype_notes,
                tokens_per_s=outcome.tokens_per_s, rows_per_s=outcome.rows_per_s)


def close_run(result: Result, ctx, outcome: Outcome) -> Result:
    """The live view's final state (with the test metrics); throughput from the loop."""
    result.tokens_per_s = result.tokens_per_s or outcome.tokens_per_s
    result.rows_per_s = result.rows_per_s or outcome.rows_per_s
    ctx.progress().end(outcome.status, **{k: v for k, v in result.metrics.items() if k.startswith("test_")})
    return result


def plot_history(history: pd.DataFrame, losses) -> bytes:
    """Train loss (a list of (step, loss), or (step, {"loss": ...})) and validation curves."""
    fig = new_figure(7, 3.2)
    ax = fig.add_subplot(1, 2, 1)
    train = [(step, value["loss"] if isinstance(value, dict) else value) for step, value in losses
             if not isinstance(value, dict) or "loss" in value]
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if "val_loss" in history:
        ax.plot(history["step"], history["val_loss"], "o-", label="val loss")
    ax.set_xlabel("optimizer step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    other = [c for c in ("val_accuracy", "val_f1", "val_perplexity") if c in history]
    if other:
        ax2 = fig.add_subplot(1, 2, 2)
        for column in other:
            ax2.plot(history["step"], history[column], "o-", label=column)
        ax2.set_xlabel("optimizer step")
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    return to_png(fig)


# ---- the base classes ------------------------------------------------------------------

@dataclass
class TrainingRun:
    """One training run's state, handed to the hooks: filled in as `run()` goes."""
    options: Any
    ctx: Any
    task: str                        # classify | sft
    device: torch.device
    source: Any                      # models.ModelSource
    data: Any                        # TaskData | SftData
    resume_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    progress: Any = None
    model: torch.nn.Module | None = None      # what the loop trains
    tokenizer: Any = None
    engine_task: Any = None                   # the engine's TrainTask
    plan: trainable.Plan | None = None
    loaded: Any = None                        # models.Loaded
    group_by_length: bool = True
    autocast: torch.dtype | None = None       # what the forward passes compute in (engine.device.train_dtype)
    loop_hooks: dict[str, Any] = field(default_factory=dict)   # TrainLoop's before_zero_grad / weights_state
    run_options: dict[str, Any] = field(default_factory=dict)  # extra values saved for --resume


class TrainingMethod(Method):
    """A method that trains a model on the engine. Options must include the model, data,
    run and training bundles (and `task`, or set the class's `task`)."""
    task: ClassVar[str | None] = None          # classify | sft; None: the `--task` option decides
    default_lr: ClassVar[float] = 5e-5
    resume_keys: ClassVar[tuple[str, ...]] = TRAINING_RESUME_KEYS
    result_class: ClassVar[type[TrainedResult]] = TrainedResult
    launchable: ClassVar[bool] = True    # run() takes --devices/--nodes (llm_magics.launch)
    model_option: ClassVar[str] = "model"   # the option naming the model that trains

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

    # -- the run ---------------------------------------------------------------------------
    def task_of(self, options) -> str:
        return self.task or getattr(options, "task", "classify")

    def run(self, o, ctx) -> TrainedResult:
        run = self.start(o, ctx)
        self.prepare(run)
        if hasattr(o, "resume"):   # what --resume must find unchanged
            save_run_options(ctx.run_dir, {**self.resume_values(o), **run.run_options}, run.data.fingerprint)
        describe_run(ctx, run.progress, run.plan)
        outcome = self.train(run)
        result = self.build_result(run, outcome)
        self.finish(run, result)
        return close_run(result, ctx, outcome)

    def start(self, o, ctx) -> TrainingRun:
        """Device, dtype, model source, --resume, data and checks; the live view: all before anything loads."""
        run = TrainingRun(o, ctx, self.task_of(o), ctx.device(o.device), resolve(getattr(o, self.model_option)), None)
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
        config = train_config(o, run.device, self.peak_lr(o), run.task, run.group_by_length,
                              self.param_groups(run.model, o))
        loop_class = getattr(run.ctx, "train_loop", TrainLoop)
        loop = loop_class(run.model, run.engine_task, config, run.progress, run.ctx.run_dir, run.device,
                          **run.loop_hooks)
        if run.resume_dir:
            loop.resume(run.resume_dir)
        return loop.run()

    def build_result(self, run: TrainingRun, outcome: Outcome) -> TrainedResult:
        return training_result(self.result_class, run, outcome)


class ClassifierTrainingMethod(TrainingMethod):
    """Trains a pooled classifier (a new head on the model) on labelled texts."""
    task = "classify"
    Options = ClassifierTrainingOptions


class CausalLMTrainingMethod(TrainingMethod):
    """Instruction-tunes a causal LM on prompt/response pairs or chat messages."""
    task = "sft"
    Options = CausalLMTrainingOptions


def classifier(loaded, data, o, device) -> SequenceClassifier:
    """A pooled classifier with a fresh fp32 head over `loaded`'s base (seeded by --seed)."""
    pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
    with seeded(o.seed):  # the head's initialisation, whether or not the base came from the cache (engine/rng.py)
        model = SequenceClassifier(loaded.model, len(data.label_names), pooling, o.head_dropout).to(device)
    model.head.float()
    return model
