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
from ..engine.device import pick_dtype
from ..engine.features import FeatureCache, cached_features, num_layers
from ..models import load_model, trainable
from ..options import option
from ..tasks.classify import FeatureTask
from ..training import TRAINING_RESUME_KEYS, TaskOptions, TrainedResult, TrainingMethod, TrainingRun, classifier

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
        # The fast path reads the frozen base in the inference dtype (shared with %probe's cache).
        loaded = load_model(run.source, "base", run.device, pick_dtype(run.device, o.dtype), fresh=False,
                            trust_remote_code=o.trust_remote_code)
        model = classifier(loaded, run.data, o, run.device)
        for param in model.base.parameters():
            param.requires_grad = False
        features, extracted = head_features(loaded, run.data, model.pooling, o.max_length, run.ctx, run.progress)
        run.notes.append("head-only fast path: the frozen base ran once"
                         + ("" if extracted else " (features from the cache)")
                         + "; its features fed the head every epoch")
        run.loaded, run.model, run.tokenizer = loaded, model, loaded.tokenizer
        run.engine_task = FeatureTask(features, run.data, run.device)
        run.plan = trainable.report(model, "--train head")


def head_features(loaded, data, pooling: str, max_length: int, ctx, progress):
    """The top layer's pooled features for every split, through %probe's cache; and whether any were extracted."""
    cache = FeatureCache(ctx.settings.subdir("features"))
    top = num_layers(loaded.model.config)
    progress.start(total=sum(len(f) for f in data.splits().values()), unit="rows")
    features, extracted = {}, 0
    for split, frame in data.splits().items():
        feats, stats = cached_features(loaded, frame["text"].tolist(), [top], pooling, cache,
                                       max_length=max_length, progress=progress)
        features[split] = feats[top]
        extracted += stats.rows
    return features, extracted
