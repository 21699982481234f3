"""A training run's Result: `TrainedResult` (predicts or generates with the trained model) and the one
place it is built from a run and the loop's Outcome — metrics, what trained, history and curves,
artifacts, throughput — and the live view's final state."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..engine import checkpoint
from ..engine.device import autocast_to, compute_dtype, train_dtype
from ..engine.loop import Outcome
from ..errors import UsageError
from ..method import Result
from ..models.classifier import SequenceClassifier
from ..runs import predictions
from ..runs.figures import new_figure, to_png
from ..tasks.causal_lm import generate
from ..tasks.classify import predict_logits, scores
from .steps import TrainingRun
from .weights import LOADED_LOCK, TrainedWeights, keep_loaded, trained_weights


@dataclass(repr=False)
class TrainedResult(Result):
    """Predicts (classify) or generates (sft) with the trained model; `.save(path)` writes it."""
    task: str = "classify"
    history: pd.DataFrame | None = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _max_length: int = 256
    _weights: TrainedWeights | None = field(default=None, repr=False)
    _rebuild: Any = field(default=None, repr=False)   # a launched run's: (model, tokenizer) from rank 0's weights
    # what the run computed in (autocast over a bf16 base, `--dtype bfloat16`): predictions compute in it too,
    # as the run's own evaluations did
    _autocast: torch.dtype | None = field(default=None, repr=False)

    def restore(self, options, rebuild) -> None:
        """A launched run's Result: the model is rebuilt from rank 0's weights when first used."""
        self._max_length = getattr(options, "max_length", self._max_length)
        self._rebuild = rebuild
        self._autocast = cpu_autocast(getattr(options, "dtype", None))   # the model is rebuilt on the CPU

    def _need_model(self):
        """The trained model: in memory, or built again from the weights on disk (`TrainedWeights`, or a
        launched run's rank 0 weights)."""
        if self._model is None and self._rebuild is not None:
            from ..models import hold
            with LOADED_LOCK:
                if self._model is None:
                    self._model, self._tokenizer = self._rebuild()
                    hold(self)
        if self._model is None and self._weights is not None:
            with LOADED_LOCK:
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
        device = next(model.parameters()).device
        with autocast_to(device, self._computes_in(model)):
            return predict_logits(model, self._tokenizer, texts, self._max_length, device)

    def predict(self, texts) -> list[str]:
        return [self.label_names[i] for i in self.logits(texts).argmax(-1).tolist()]

    def predict_proba(self, texts) -> pd.DataFrame:
        return pd.DataFrame(self.logits(texts).softmax(-1).numpy(), columns=self.label_names)

    def generate(self, prompts, max_new_tokens: int = 64, **kwargs):
        if self.task != "sft":
            raise TypeError("this run trained a classifier: use .predict(texts)")
        model = self._need_model()
        with autocast_to(next(model.parameters()).device, self._computes_in(model)):
            return generate(model, self._tokenizer, prompts, max_new_tokens, **kwargs)

    def _computes_in(self, model) -> torch.dtype | None:
        """The autocast its predictions run under: the run's."""
        return self._autocast

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


def cpu_autocast(option: str | None) -> torch.dtype | None:
    """What a run with this `--dtype` computes in on the CPU (`train_dtype`'s rule); float16, which only CUDA
    trains in, predicts there in fp32."""
    try:
        return train_dtype(torch.device("cpu"), option)
    except UsageError:
        return None


def _has_split(task, split: str) -> bool:
    for attribute in ("rows", "ids", "x"):
        holder = getattr(task, attribute, None)
        if isinstance(holder, dict) and holder.get(split) is not None and len(holder[split]):
            return True
    return False


def training_result(result_cls: type[TrainedResult], run: TrainingRun, outcome: Outcome,
                    **extra) -> TrainedResult:
    """The one place a training Result is built: metrics (the restored best weights scored on
    validation and test, the last train loss), what trained, history, curves, artifacts,
    throughput. `extra` sets fields of `result_cls` (and may add artifacts)."""
    o, ctx, model, task = run.options, run.ctx, run.model, run.engine_task
    metrics: dict[str, float] = {}
    kept = None
    with autocast_to(run.device, run.autocast):   # in the dtype the loop's evaluations computed in
        metrics.update(task.split_scores(model, "val"))
        if _has_split(task, "test"):
            kept = test_predictions(run, model) if run.task == "classify" and hasattr(task, "split_logits") else None
            metrics.update(scores(*kept[1:], "test") if kept else task.split_scores(model, "test"))
    if run.task == "sft" and outcome.history and "val_loss" in outcome.history[0]:
        metrics["val_loss_before"] = outcome.history[0]["val_loss"]
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
                  task=run.task, _model=model, _tokenizer=run.tokenizer, _max_length=o.max_length,
                  _autocast=run.autocast)
    fields.update(extra)
    if result_cls._need_model is TrainedResult._need_model and "_model" not in extra:
        # the weights stay on disk; the newest Results keep their model loaded
        fields["_weights"] = trained_weights(run, outcome, model)
    result = result_cls(**fields)
    if kept:   # per-item test predictions, kept with the run so that runs pair up (runs/predictions.py)
        result.predictions = predictions.kept_with_run(kept[0], ctx.run_dir, result.artifacts)
    if result._weights is not None:
        keep_loaded(result)
    return result


def test_predictions(run: TrainingRun, model) -> tuple[pd.DataFrame, torch.Tensor, torch.Tensor]:
    """A classifier's test split scored once: (per-item frame, logits, labels) — the metrics come from the same
    logits, so the frame's mean correctness is test_accuracy."""
    task, test = run.engine_task, run.data.test
    logits, labels = task.split_logits(model, "test").float().cpu(), task.labels["test"].cpu()
    probs = logits.softmax(-1)
    frame = predictions.per_item(test["text"].tolist(), labels.tolist(), probs.argmax(-1).tolist(),
                                 probs.max(-1).values.tolist(), run.data.label_names)
    return frame, logits, labels


def result_fields(run: TrainingRun, outcome: Outcome, model) -> dict[str, Any]:
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


def close_run(result: Result, ctx, outcome: Outcome, shown: dict[str, float] | None = None) -> Result:
    """The live view's final state (with `shown`, by default the test metrics); throughput from the loop."""
    result.tokens_per_s = result.tokens_per_s or outcome.tokens_per_s
    result.rows_per_s = result.rows_per_s or outcome.rows_per_s
    if shown is None:
        shown = {k: v for k, v in result.metrics.items() if k.startswith("test_")}
    ctx.progress().end(outcome.status, **shown)
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
