"""What the training methods (`%finetune`, `%lora`) share: task options, data,
the engine's configuration, resuming, and the Result they return."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import options as opts
from ..data import prepare_classification
from ..data.sft import prepare_sft
from ..engine import checkpoint
from ..engine.device import dtype_name, pick_dtype
from ..engine.features import POOLINGS
from ..engine.training import Outcome, TrainConfig
from ..errors import UsageError
from ..method import Result
from ..models.classifier import SequenceClassifier
from ..options import option
from ..progress import in_kernel
from ..runs.figures import new_figure, to_png
from ..tasks.causal_lm import generate
from ..tasks.classify import predict_logits


@dataclass
class TaskOptions:
    task: str = option("classify", "classify (a label per text) or sft (a causal LM learns responses)",
                       choices=("classify", "sft"))
    pooling: str = option("auto", "classify: how token states become one vector (auto: mean for encoders, "
                                  "last token for decoders)", choices=("auto",) + POOLINGS)
    head_dropout: float = option(0.1, "classify: dropout before the classification head", check=opts.dropout_rate)
    prompt: str | None = option(None, "sft: the prompt column (default: inferred)", metavar="COLUMN")
    response: str | None = option(None, "sft: the response column (default: inferred)", metavar="COLUMN")
    messages: str | None = option(None, "sft: a column of chat messages [{role, content}] instead of "
                                        "prompt/response", metavar="COLUMN")

    def validate(self) -> None:
        if self.task == "classify" and (self.prompt or self.response or self.messages):
            raise UsageError("--prompt/--response/--messages are for --task sft; classification uses --text/--label")


def prepare_data(o, ctx):
    """TaskData (classify) or SftData (sft), from the shared data options."""
    if o.task == "classify":
        return prepare_classification(o.data, o.validation, o.test, text=o.text, label=o.label, seed=o.seed,
                                      val_size=o.val_size, test_size=o.test_size, namespace=ctx.namespace)
    return prepare_sft(o.data, o.validation, o.test, prompt=o.prompt, response=o.response, messages=o.messages,
                       seed=o.seed, val_size=o.val_size, namespace=ctx.namespace)


def train_config(o, device: torch.device, lr: float, group_by_length: bool = True) -> TrainConfig:
    classify = o.task == "classify"
    return TrainConfig(epochs=o.epochs, lr=lr, batch_size=o.batch_size, grad_accum=o.grad_accum,
                       max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                       scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                       best_metric="val_accuracy" if classify else "val_loss", greater_is_better=classify,
                       seed=o.seed, autocast=pick_dtype(device, o.dtype) if device.type == "cuda" else None,
                       group_by_length=group_by_length)


def describe_run(ctx, progress, plan) -> None:
    """What trains, in the live view before the first step; and, for a foreground run in a
    notebook (which can't take button clicks while it runs), how to stop it."""
    hint = ""
    if not ctx.background and in_kernel():
        hint = ("to stop cleanly, interrupt the kernel (■): the best checkpoint is kept; "
                "--bg runs in the background with a Stop button")
    progress.describe(plan.line(), hint)


# ---- resuming --------------------------------------------------------------------------

def save_run_options(folder: Path, values: dict[str, Any], fingerprint: str) -> None:
    (folder / "run_options.json").write_text(json.dumps({"options": values, "data_fingerprint": fingerprint}))


def find_checkpoint(spec: str, ctx) -> Path:
    runs = ctx.settings.subdir("runs")
    if spec == "last":
        candidates = sorted((p for p in runs.glob(f"{ctx.method}-*/checkpoint-last") if checkpoint.exists(p)),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UsageError(f"--resume last: no stopped or crashed {ctx.method} run has a checkpoint to resume")
        return candidates[-1]
    folder = runs / spec / "checkpoint-last"
    if not checkpoint.exists(folder):
        known = sorted(p.parent.name for p in runs.glob("*/checkpoint-last"))
        raise UsageError(f"--resume {spec}: no resumable checkpoint for that run"
                         + (f"; resumable: {', '.join(known)}" if known else "; no run has one"))
    return folder


def check_resumable(folder: Path, values: dict[str, Any], fingerprint: str) -> None:
    saved = json.loads((folder.parent / "run_options.json").read_text())
    if saved["data_fingerprint"] != fingerprint:
        raise UsageError("--resume: the data differ from the interrupted run's; pass the same --data/--validation/--test")
    changed = [f"--{k.replace('_', '-')} {saved['options'].get(k)!r} (now {v!r})"
               for k, v in values.items() if saved["options"].get(k) != v]
    if changed:
        raise UsageError("--resume continues the same run; these options differ from it: " + "; ".join(changed))


# ---- the Result ------------------------------------------------------------------------

@dataclass
class TrainedResult(Result):
    """Predicts (classify) or generates (sft) with the trained model; `.save(path)` writes it."""
    task: str = "classify"
    history: pd.DataFrame | None = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _max_length: int = 256

    def _need_model(self):
        if self._model is None:
            raise RuntimeError("the model was released (%llm free); run again or load a saved copy")
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
        self._model = None


def result_fields(o, ctx, data, task, model, outcome: Outcome, device, plan) -> dict[str, Any]:
    """Metrics (best validation, test, training), what trained, history, curves, artifacts."""
    metrics: dict[str, float] = {}
    metrics.update(task.split_scores(model, "val"))  # the restored best weights, scored again
    if o.task == "sft" and outcome.history and "val_loss" in outcome.history[0]:
        metrics["val_loss_before"] = outcome.history[0]["val_loss"]
    if _has_split(task, "test"):
        metrics.update(task.split_scores(model, "test"))
    steps = ctx.progress().state.history
    train_losses = [values["loss"] for _, values in steps if "loss" in values]
    if train_losses:
        metrics["train_loss"] = float(train_losses[-1])
    metrics["epochs"] = round(outcome.epochs_run, 3)
    metrics["steps"] = outcome.steps
    history = pd.DataFrame(outcome.history)
    tables = {"trainable parameters": plan.groups}
    if len(history):
        tables["history"] = history
    fields = dict(metrics=metrics, data_fingerprint=data.fingerprint, device=str(device),
                  dtype=dtype_name(next(model.parameters()).dtype), status=outcome.status,
                  label_names=getattr(data, "label_names", None), task=o.task, history=history,
                  trainable_params=plan.trainable, total_params=plan.total, tables=tables,
                  figures={"training curves": plot_history(history, steps)} if len(history) else {},
                  artifacts={"run_dir": str(ctx.run_dir)}, _max_length=o.max_length)
    if checkpoint.has_weights(ctx.run_dir / "checkpoint-best"):
        fields["artifacts"]["best_checkpoint"] = str(ctx.run_dir / "checkpoint-best")
    if checkpoint.exists(ctx.run_dir / "checkpoint-last"):
        fields["artifacts"]["resume_checkpoint"] = str(ctx.run_dir / "checkpoint-last")
    return fields


def close_run(result: TrainedResult, ctx, outcome: Outcome) -> TrainedResult:
    """Throughput from the loop, and the live view's final state."""
    result.tokens_per_s = outcome.tokens_per_s
    result.rows_per_s = outcome.rows_per_s
    ctx.progress().end(outcome.status, **{k: v for k, v in result.metrics.items() if k.startswith("test_")})
    return result


def _has_split(task, split: str) -> bool:
    for attribute in ("rows", "ids", "x"):
        holder = getattr(task, attribute, None)
        if isinstance(holder, dict) and holder.get(split) is not None and len(holder[split]):
            return True
    return False


def plot_history(history: pd.DataFrame, steps: list[tuple[int, dict]]) -> bytes:
    fig = new_figure(7, 3.2)
    ax = fig.add_subplot(1, 2, 1)
    train = [(step, values["loss"]) for step, values in steps if "loss" in values]
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
