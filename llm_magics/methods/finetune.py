"""`%finetune`: train the output layer only, the last N blocks, or every layer.

Two tasks: `classify` (a pooled sequence classifier on an encoder or a
decoder) and `sft` (a causal LM on prompt/response pairs or chat messages,
loss on responses only). `--train head` for classification takes the fast
path: the frozen base runs once, its features (the same cache as `%probe`)
feed the head every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from ..models import trainable
from ..options import option
from ..training import (TRAINING_RESUME_KEYS, TaskOptions, TrainedResult, TrainingMethod, TrainingRun,
                        prepare_head_only)

# Peak learning rates that work across our models when the user sets none.
DEFAULT_LR = {"head": 5e-3, "last": 1e-4, "all": 5e-5}


@dataclass
class FinetuneOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, TaskOptions):
    train: str = option("all", "what trains: head (the output layer), last:N (the last N blocks and the head) "
                               "or all", check=trainable.check_spec, metavar="SPEC")
    feature_cache: bool = option(True, "classify --train head: run the frozen base once and train the head on "
                                       "its cached features (--no-feature-cache trains through the base)")


@dataclass(repr=False)
class FinetuneResult(TrainedResult):
    """Predicts (classify) or generates (sft) with the fine-tuned model; `.save(path)` writes it."""


class FinetuneMethod(TrainingMethod):
    name = "finetune"
    summary = ("Fine-tune the output layer only (--train head), the last N blocks (last:N) or all layers, "
               "for classification (--task classify) or instruction tuning of a causal LM (--task sft). "
               f"Default learning rates: head {DEFAULT_LR['head']}, last:N {DEFAULT_LR['last']}, "
               f"all {DEFAULT_LR['all']}.")
    Options = FinetuneOptions
    result_class = FinetuneResult
    resume_keys = TRAINING_RESUME_KEYS + ("train",)

    def peak_lr(self, o: FinetuneOptions) -> float:
        return o.lr or DEFAULT_LR[o.train.split(":")[0]]

    def select_trainable(self, model, o: FinetuneOptions):
        return trainable.selector(model, o.train)

    def title(self, o: FinetuneOptions, source) -> str:
        return f"finetune · {source.short} · {o.task} · --train {o.train}"

    def plan_label(self, o: FinetuneOptions) -> str:
        return f"--train {o.train}"

    def prepare(self, run: TrainingRun) -> None:
        o = run.options
        # Head-only trains on the same random batches with or without the feature cache,
        # so the two paths compute the same thing.
        run.group_by_length = o.train != "head"
        if not (run.task == "classify" and o.train == "head" and o.feature_cache):
            super().prepare(run)
            run.plan.notes += trainable.tie_note(run.model, o.train)
            return
        prepare_head_only(run, "--train head")
