"""`%finetune`: train the output layer only, the last N blocks, or every layer.

Two tasks: `classify` (a pooled sequence classifier on an encoder or a
decoder) and `sft` (a causal LM on prompt/response pairs or chat messages,
loss on responses only). `--train head` for classification takes the fast
path: the frozen base runs once, its features (the same cache as `%probe`)
feed the head every epoch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import options as opts
from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from ..data import prepare_classification
from ..data.sft import prepare_sft
from ..engine import checkpoint
from ..engine.device import dtype_name, pick_dtype
from ..engine.features import POOLINGS, FeatureCache, cached_features, default_pooling, num_layers
from ..engine.training import TrainConfig, TrainLoop
from ..errors import UsageError
from ..method import Method, Result
from ..models import hold, load_model, resolve, trainable
from ..models.classifier import SequenceClassifier
from ..options import option
from ..runs.figures import new_figure, to_png
from ..tasks.causal_lm import SftTask, generate
from ..tasks.classify import FeatureTask, TokenTask, predict_logits

# Peak learning rates that work across our models when the user sets none.
DEFAULT_LR = {"head": 5e-3, "last": 1e-4, "all": 5e-5}
# Options that must match for --resume to continue the same run.
RESUME_KEYS = ("model", "task", "train", "pooling", "epochs", "lr", "batch_size", "grad_accum", "seed",
               "scheduler", "warmup", "max_length", "weight_decay", "max_grad_norm", "eval_every")


@dataclass
class FinetuneOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions):
    task: str = option("classify", "classify (a label per text) or sft (a causal LM learns responses)",
                       choices=("classify", "sft"))
    train: str = option("all", "what trains: head (the output layer), last:N (the last N blocks and the head) "
                               "or all", check=trainable.check_spec, metavar="SPEC")
    pooling: str = option("auto", "classify: how token states become one vector (auto: mean for encoders, "
                                  "last token for decoders)", choices=("auto",) + POOLINGS)
    dropout: float = option(0.1, "classify: dropout before the head", check=opts.non_negative)
    prompt: str | None = option(None, "sft: the prompt column (default: inferred)", metavar="COLUMN")
    response: str | None = option(None, "sft: the response column (default: inferred)", metavar="COLUMN")
    messages: str | None = option(None, "sft: a column of chat messages [{role, content}] instead of "
                                        "prompt/response", metavar="COLUMN")
    feature_cache: bool = option(True, "classify --train head: run the frozen base once and train the head on "
                                       "its cached features (--no-feature-cache trains through the base)")

    def validate(self) -> None:
        if self.task == "classify" and (self.prompt or self.response or self.messages):
            raise UsageError("--prompt/--response/--messages are for --task sft; classification uses --text/--label")

    def peak_lr(self) -> float:
        return self.lr or DEFAULT_LR[self.train.split(":")[0]]


@dataclass
class FinetuneResult(Result):
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

    def predict(self, texts) -> list[str]:
        if self.task != "classify":
            raise TypeError("this run tuned a causal LM: use .generate(prompts)")
        probs = self.predict_proba(texts)
        return [self.label_names[i] for i in probs.to_numpy().argmax(1)]

    def predict_proba(self, texts) -> pd.DataFrame:
        texts = [texts] if isinstance(texts, str) else list(texts)
        model = self._need_model()
        device = next(model.parameters()).device
        logits = predict_logits(model, self._tokenizer, texts, self._max_length, device)
        return pd.DataFrame(logits.softmax(-1).numpy(), columns=self.label_names)

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
        if o.task == "classify":
            data = prepare_classification(o.data, o.validation, o.test, text=o.text, label=o.label, seed=o.seed,
                                          val_size=o.val_size, test_size=o.test_size, namespace=ctx.namespace)
        else:
            data = prepare_sft(o.data, o.validation, o.test, prompt=o.prompt, response=o.response,
                               messages=o.messages, seed=o.seed, val_size=o.val_size, namespace=ctx.namespace)
        if resume_dir:
            check_resumable(resume_dir, o, data.fingerprint)
        progress = ctx.progress(f"finetune · {source.short} · {o.task} · --train {o.train}")
        model, tokenizer, task, notes, extract = self._prepare(o, ctx, source, data, device, progress)
        plan = trainable.apply(model, o.train) if not isinstance(task, FeatureTask) else trainable.report(model, "head")
        ctx.display(plan)
        save_run_options(ctx.run_dir, o, data.fingerprint)
        config = TrainConfig(epochs=o.epochs, lr=o.peak_lr(), batch_size=o.batch_size, grad_accum=o.grad_accum,
                             max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                             scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                             best_metric="val_accuracy" if o.task == "classify" else "val_loss",
                             greater_is_better=o.task == "classify", seed=o.seed,
                             autocast=pick_dtype(device, o.dtype) if device.type == "cuda" else None,
                             # Head-only trains on the same random batches with or without the feature
                             # cache, so the two paths compute the same thing.
                             group_by_length=o.train != "head")
        loop = TrainLoop(model, task, config, progress, ctx.run_dir, device)
        if resume_dir:
            loop.resume(resume_dir)
        outcome = loop.run()
        return self._result(o, ctx, source, data, model, tokenizer, task, plan, outcome, notes, extract, device)

    def _prepare(self, o, ctx, source, data, device, progress):
        """The model to train, its tokenizer, the task, notes, and feature-extraction stats (fast path)."""
        notes = list(data.notes)
        if o.task == "sft":
            loaded = load_model(source, "causal_lm", device, torch.float32, fresh=True,
                                trust_remote_code=o.trust_remote_code)
            if loaded.kind != "decoder":
                raise UsageError(f"--task sft needs a decoder (causal LM); {source.name} is an {loaded.kind}, "
                                 "e.g. use --model smollm2")
            task = SftTask(data, loaded.tokenizer, o.max_length, device)
            if task.dropped:
                notes.append(f"{task.dropped} rows dropped: no response token left within --max-length")
            if not task.rows["train"]:
                raise UsageError("no training row has a response within --max-length; raise --max-length")
            return loaded.model, loaded.tokenizer, task, notes, None
        fast = o.train == "head" and o.feature_cache
        # The fast path reads the frozen base in the inference dtype (shared with %probe's cache);
        # training through the model needs an fp32 copy of its own.
        dtype = pick_dtype(device, o.dtype) if fast else torch.float32
        loaded = load_model(source, "base", device, dtype, fresh=not fast, trust_remote_code=o.trust_remote_code)
        pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
        torch.manual_seed(o.seed)  # the head's initialisation, whether or not the base came from the cache
        model = SequenceClassifier(loaded.model, len(data.label_names), pooling, o.dropout).to(device)
        model.head.float()
        if not fast:
            return model, loaded.tokenizer, TokenTask(data, loaded.tokenizer, o.max_length, device), notes, None
        for param in model.base.parameters():
            param.requires_grad = False
        cache = FeatureCache(ctx.settings.subdir("features"))
        top = num_layers(loaded.model.config)
        features, extract = {}, None
        progress.start(total=sum(len(f) for f in data.splits().values()), unit="rows")
        for split, frame in data.splits().items():
            feats, stats = cached_features(loaded, frame["text"].tolist(), [top], pooling, cache,
                                           max_length=o.max_length, progress=progress)
            features[split] = feats[top]
            if extract is None:
                extract = stats
            else:
                extract.add(stats)
        notes.append("head-only fast path: the frozen base ran once"
                     + (" (features from the cache)" if extract.extracted_layers == 0 else "")
                     + "; its features fed the head every epoch")
        return model, loaded.tokenizer, FeatureTask(features, data, device), notes, extract

    def _result(self, o, ctx, source, data, model, tokenizer, task, plan, outcome, notes, extract, device):
        metrics: dict[str, float] = {}
        if outcome.best:
            metrics.update({k: v for k, v in outcome.best.items() if k.startswith("val_")})
        final = task.split_scores(model, "val")  # the restored best weights, scored again
        metrics.update(final)
        if o.task == "sft" and outcome.history:
            metrics["val_loss_before"] = outcome.history[0]["val_loss"]
        test = task.split_scores(model, "test") if _has_test(task) else {}
        metrics.update(test)
        history = pd.DataFrame(outcome.history)
        train_losses = [values["loss"] for _, values in ctx.progress().state.history if "loss" in values]
        if train_losses:
            metrics["train_loss"] = float(train_losses[-1])
        metrics["epochs"] = round(outcome.epochs_run, 3)
        metrics["steps"] = outcome.steps
        result = FinetuneResult(
            method=self.name, metrics=metrics, model=source.short, data_fingerprint=data.fingerprint,
            trainable_params=plan.trainable, total_params=plan.total, device=str(device),
            dtype=dtype_name(next(model.parameters()).dtype),
            status=outcome.status, label_names=getattr(data, "label_names", None), task=o.task, history=history,
            notes=notes + outcome.notes + plan.notes, _model=model, _tokenizer=tokenizer, _max_length=o.max_length)
        result.tokens_per_s = outcome.tokens_per_s
        result.rows_per_s = outcome.rows_per_s
        if extract is not None and extract.rows:
            result.notes.append(f"feature extraction: {extract.rows_per_s:,.0f} rows/s, "
                                f"{extract.tokens_per_s:,.0f} tokens/s")
        result.artifacts["run_dir"] = str(ctx.run_dir)
        if checkpoint.exists(ctx.run_dir / "checkpoint-best"):
            result.artifacts["best_checkpoint"] = str(ctx.run_dir / "checkpoint-best")
        if (ctx.run_dir / "checkpoint-last").exists():
            result.artifacts["resume_checkpoint"] = str(ctx.run_dir / "checkpoint-last")
        if len(history):
            result.tables["history"] = history
            result.figures["training curves"] = plot_history(history, ctx.progress().state.history)
        ctx.progress().end(outcome.status, **{k: v for k, v in metrics.items() if k.startswith("test_")})
        hold(result)
        return result


def _has_test(task) -> bool:
    return bool(getattr(task, "rows", {}).get("test")) or "test" in getattr(task, "labels", {}) \
        or "test" in getattr(task, "ids", {})


def save_run_options(folder: Path, o: FinetuneOptions, fingerprint: str) -> None:
    values = {k: v for k, v in opts.as_dict(o).items() if k in RESUME_KEYS}
    values["lr"] = o.peak_lr()
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


def check_resumable(folder: Path, o: FinetuneOptions, fingerprint: str) -> None:
    saved = json.loads((folder.parent / "run_options.json").read_text())
    if saved["data_fingerprint"] != fingerprint:
        raise UsageError("--resume: the data differ from the interrupted run's; pass the same --data/--validation/--test")
    now = {k: v for k, v in opts.as_dict(o).items() if k in RESUME_KEYS}
    now["lr"] = o.peak_lr()
    changed = [f"--{k.replace('_', '-')} {saved['options'].get(k)!r} (now {now.get(k)!r})"
               for k in RESUME_KEYS if saved["options"].get(k) != now.get(k)]
    if changed:
        raise UsageError("--resume continues the same run; these options differ from it: " + "; ".join(changed))


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
