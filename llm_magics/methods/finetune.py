"""`%finetune`: train the output layer only, the last N blocks, or every layer.

Two tasks: `classify` (a pooled sequence classifier on an encoder or a
decoder) and `sft` (a causal LM on prompt/response pairs or chat messages,
loss on responses only). `--train head` for classification takes the fast
path: the frozen base runs once, its features (the same cache as `%probe`)
feed the head every epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import options as opts
from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from ..engine.device import pick_dtype
from ..engine.features import FeatureCache, cached_features, default_pooling, num_layers
from ..engine.training import TrainLoop
from ..method import Method
from ..models import hold, load_model, resolve, trainable
from ..models.classifier import SequenceClassifier
from ..options import option
from ..tasks.causal_lm import require_decoder, sft_task
from ..tasks.classify import FeatureTask, TokenTask
from .training_common import (TaskOptions, TrainedResult, describe_run, check_resumable, find_checkpoint,
                              close_run, prepare_data, result_fields, save_run_options, train_config)

# Peak learning rates that work across our models when the user sets none.
DEFAULT_LR = {"head": 5e-3, "last": 1e-4, "all": 5e-5}
# Options that must match for --resume to continue the same run.
RESUME_KEYS = ("model", "task", "train", "pooling", "epochs", "lr", "batch_size", "grad_accum", "seed",
               "scheduler", "warmup", "max_length", "weight_decay", "max_grad_norm", "eval_every")


@dataclass
class FinetuneOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, TaskOptions):
    train: str = option("all", "what trains: head (the output layer), last:N (the last N blocks and the head) "
                               "or all", check=trainable.check_spec, metavar="SPEC")
    feature_cache: bool = option(True, "classify --train head: run the frozen base once and train the head on "
                                       "its cached features (--no-feature-cache trains through the base)")

    def peak_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.train.split(":")[0]]

    def resume_values(self) -> dict:
        values = {k: v for k, v in opts.as_dict(self).items() if k in RESUME_KEYS}
        values["lr"] = self.peak_lr()
        return values


@dataclass
class FinetuneResult(TrainedResult):
    """Predicts (classify) or generates (sft) with the fine-tuned model; `.save(path)` writes it."""


class FinetuneMethod(Method):
    name = "finetune"
    summary = ("Fine-tune the output layer only (--train head), the last N blocks (last:N) or all layers, "
               "for classification (--task classify) or instruction tuning of a causal LM (--task sft). "
               f"Default learning rates: head {DEFAULT_LR['head']}, last:N {DEFAULT_LR['last']}, "
               f"all {DEFAULT_LR['all']}.")
    Options = FinetuneOptions

    def run(self, o: FinetuneOptions, ctx) -> FinetuneResult:
        device = ctx.device(o.device)
        source = resolve(o.model)
        resume_dir = find_checkpoint(o.resume, ctx) if o.resume else None
        data = prepare_data(o, ctx)
        if resume_dir:
            check_resumable(resume_dir, o.resume_values(), data.fingerprint)
        progress = ctx.progress(f"finetune · {source.short} · {o.task} · --train {o.train}")
        model, tokenizer, task, notes = self._prepare(o, ctx, source, data, device, progress)
        plan = (trainable.report(model, "--train head") if isinstance(task, FeatureTask)
                else trainable.apply(model, o.train))
        save_run_options(ctx.run_dir, o.resume_values(), data.fingerprint)
        describe_run(ctx, progress, plan)
        # Head-only trains on the same random batches with or without the feature cache,
        # so the two paths compute the same thing.
        config = train_config(o, device, o.peak_lr(), group_by_length=o.train != "head")
        loop = TrainLoop(model, task, config, progress, ctx.run_dir, device)
        if resume_dir:
            loop.resume(resume_dir)
        outcome = loop.run()
        result = FinetuneResult(method=self.name, model=source.short, notes=notes + outcome.notes + plan.notes,
                                _model=model, _tokenizer=tokenizer,
                                **result_fields(o, ctx, data, task, model, outcome, device, plan))
        hold(result)
        return close_run(result, ctx, outcome)

    def _prepare(self, o, ctx, source, data, device, progress):
        """The model to train, its tokenizer, the task, and notes."""
        notes = list(data.notes)
        if o.task == "sft":
            loaded = load_model(source, "causal_lm", device, torch.float32, fresh=True,
                                trust_remote_code=o.trust_remote_code)
            require_decoder(loaded, source)
            return loaded.model, loaded.tokenizer, sft_task(data, loaded.tokenizer, o, device, notes), notes
        fast = o.train == "head" and o.feature_cache
        # The fast path reads the frozen base in the inference dtype (shared with %probe's cache);
        # training through the model needs an fp32 copy of its own.
        dtype = pick_dtype(device, o.dtype) if fast else torch.float32
        loaded = load_model(source, "base", device, dtype, fresh=not fast, trust_remote_code=o.trust_remote_code)
        model = classifier(loaded, data, o, device)
        if not fast:
            return model, loaded.tokenizer, TokenTask(data, loaded.tokenizer, o.max_length, device), notes
        for param in model.base.parameters():
            param.requires_grad = False
        features, extracted = head_features(loaded, data, model.pooling, o.max_length, ctx, progress)
        notes.append("head-only fast path: the frozen base ran once"
                     + ("" if extracted else " (features from the cache)") + "; its features fed the head every epoch")
        return model, loaded.tokenizer, FeatureTask(features, data, device), notes


def classifier(loaded, data, o, device) -> SequenceClassifier:
    pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
    torch.manual_seed(o.seed)  # the head's initialisation, whether or not the base came from the cache
    model = SequenceClassifier(loaded.model, len(data.label_names), pooling, o.head_dropout).to(device)
    model.head.float()
    return model


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
