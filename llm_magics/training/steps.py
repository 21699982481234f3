"""One training run's state (`TrainingRun`, handed to every hook) and the steps `TrainingMethod.run()` is
made of, public for methods that assemble their own: the data, the classifier, the engine's
configuration and what the live view says before the first step."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import prepare_classification
from ..data.sft import prepare_sft
from ..engine.features import default_pooling
from ..engine.loop import TrainConfig
from ..engine.rng import seeded
from ..models import trainable
from ..models.classifier import SequenceClassifier
from ..progress import in_kernel
from .options import ParamGroup


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
    answer: Any = None   # a Result `prepare` reached without training: run() returns it (%rlhf --probe-reward)
    carried: list[Path] = field(default_factory=list)   # the earlier phases' weights this phase started from


def prepare_data(o, ctx, task: str):
    """TaskData (classify) or SftData (sft), from the shared data options."""
    if task == "classify":
        return prepare_classification(o.data, o.validation, o.test, text=o.text, label=o.label, seed=o.seed,
                                      val_size=o.val_size, test_size=o.test_size, namespace=ctx.namespace)
    return prepare_sft(o.data, o.validation, o.test, prompt=o.prompt, response=o.response, messages=o.messages,
                       seed=o.seed, val_size=o.val_size, namespace=ctx.namespace)


def classifier(loaded, data, o, device) -> SequenceClassifier:
    """A pooled classifier with a fresh fp32 head over `loaded`'s base (seeded by --seed)."""
    pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
    with seeded(o.seed):  # the head's initialisation, whether or not the base came from the cache (engine/rng.py)
        model = SequenceClassifier(loaded.model, len(data.label_names), pooling, o.head_dropout).to(device)
    model.head.float()
    return model


def train_config(o, autocast: torch.dtype | None, lr: float, task: str, group_by_length: bool = True,
                 param_groups: list[ParamGroup] | None = None) -> TrainConfig:
    """The engine's configuration from the training options; `autocast`: the run's (`TrainingRun.autocast`)."""
    classify = task == "classify"
    return TrainConfig(epochs=o.epochs, lr=lr, batch_size=o.batch_size, grad_accum=o.grad_accum,
                       max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                       scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                       best_metric="val_accuracy" if classify else "val_loss", greater_is_better=classify,
                       seed=o.seed, autocast=autocast,
                       group_by_length=group_by_length, param_groups=tuple(param_groups or ()))


def describe_run(ctx, progress, plan) -> None:
    """What trains, in the live view before the first step; and, for a foreground run in a
    notebook (which can't take button clicks while it runs), how to stop it."""
    hint = ""
    if not ctx.background and in_kernel():
        hint = ("to stop cleanly, interrupt the kernel (■): the best checkpoint is kept; "
                "--bg runs in the background with a Stop button")
    progress.describe(plan.line(), hint)
