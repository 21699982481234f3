"""The option bundles of the training base: the task (classify or sft), its columns and pooling, and the
whole option classes a classifier or a causal-LM trainer reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import options as opts
from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from ..engine.features import POOLINGS
from ..errors import UsageError
from ..options import option

Predicate = Callable[[str, torch.nn.Parameter], bool]
ParamGroup = tuple[str, Predicate, float]     # (name, which parameters, peak learning rate)

# Options of the shared bundles that must match for --resume to continue the same run.
TRAINING_RESUME_KEYS = ("model", "task", "pooling", "epochs", "lr", "batch_size", "grad_accum", "seed",
                        "scheduler", "warmup", "max_length", "weight_decay", "max_grad_norm", "eval_every")


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


@dataclass(frozen=True)
class Phase:
    """One phase of a multi-phase training method (`TrainingMethod.phases`): `name` (the live view and the record
    say it), `options` (the option values this phase changes: `{"epochs": 1, "lr": 5e-3}`) and `head_only` (a
    classifier's base stays frozen and runs once: its cached features feed the head, as `%finetune --train head`).
    Only a first phase may be head-only. A phase starts from the weights the phases before it trained."""
    name: str
    options: dict = field(default_factory=dict)
    head_only: bool = False
