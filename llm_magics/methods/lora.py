"""`%lora`: parameter-efficient fine-tuning through PEFT, and the adapters it makes.

    %lora --model minilm --data train_df --method lora --r 8        # train (classify or sft)
    %lora adapters                                                 # what is loaded
    %lora save NAME PATH    %lora load PATH --as NAME    %lora use NAME
    %lora merge NAME [--save PATH]    %lora unload NAME

Every trained adapter joins the session's hub: adapters of one PEFT type on
one base share that base in memory, and switching between them reloads
nothing. Training runs on the engine `%finetune` uses (same data handling,
progress, Stop, resume, run store).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import options as opts
from ..adapters import METHODS, PROMPT_LEARNING, AdapterInfo, AdapterSet, hub, merged_copy, read_info, smoke_test
from ..adapters.build import base_model, check_bits, working_methods, wrap_new, wrap_saved
from ..adapters.hub import saved_head
from ..adapters.methods import name_clash, smoke_rows
from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from ..engine.device import dtype_name, pick_dtype
from ..engine.training import TrainLoop, WeightsState, steps_per_epoch
from ..errors import UsageError
from ..method import Command, Method
from ..models import resolve, trainable
from ..options import option, positive
from ..tasks.classify import TokenTask
from ..tasks.causal_lm import sft_task
from .training_common import (TaskOptions, TrainedResult, describe_run, check_resumable, find_checkpoint,
                              close_run, prepare_data, result_fields, save_run_options, train_config)

# Peak learning rates when the user sets none (measured on SST-2 and small SFT sets): IA3 only
# rescales, virtual tokens start far from useful, a causal LM's responses need gentler steps.
DEFAULT_LR = {"tuner": 2e-3, "tuner-sft": 5e-4, "ia3": 5e-3, "prompt": 2e-2}
RESUME_KEYS = ("model", "task", "method", "r", "alpha", "dropout", "target", "virtual_tokens", "init_text",
               "block_size", "target_r", "pooling", "epochs", "lr", "batch_size", "grad_accum", "seed",
               "scheduler", "warmup", "max_length", "weight_decay", "max_grad_norm", "eval_every", "bits", "dtype")


def _bits(value) -> str | None:
    return None if value in (None, 4, 8) else f"is 4 or 8, got {value}"


def adapter_name(value) -> str | None:
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", str(value)):
        return f"{value!r} is not a valid adapter name: letters, digits, _ and -"
    return None


@dataclass
class LoraOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, TaskOptions):
    method: str = option("lora", "the PEFT method", choices=METHODS)
    r: int = option(8, "rank (lora, rslora, dora, loha, lokr; adalora's starting rank)", check=positive)
    alpha: float | None = option(None, "scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.05, "dropout on the adapter's input", check=opts.dropout_rate)
    target: list[str] = option(["all-linear"], "layers to adapt: all-linear (every linear layer in the blocks) "
                                               "or names such as q_proj,v_proj", metavar="NAMES")
    target_r: int | None = option(None, "adalora: the average rank it prunes to (default: r / 2)", check=positive)
    block_size: int = option(32, "oft: block size of the orthogonal matrices", check=positive)
    virtual_tokens: int = option(20, "prefix, ptuning, prompt: number of virtual tokens", check=positive)
    encoder_hidden: int = option(128, "ptuning: hidden size of the prompt encoder", check=positive)
    init_text: str | None = option(None, "prompt: initialise the virtual tokens from this text", metavar="TEXT")
    bits: int | None = option(None, "QLoRA: load the frozen base in 4 or 8 bits (bitsandbytes, CUDA only)",
                              check=_bits)
    name: str | None = option(None, "the adapter's name in the session (default: the run id)", check=adapter_name)

    def validate(self) -> None:
        TaskOptions.validate(self)
        if self.init_text and self.method != "prompt":
            raise UsageError("--init-text initialises prompt tuning; use it with --method prompt")
        if self.bits and self.method in PROMPT_LEARNING:
            raise UsageError(f"--bits quantizes the layers a tuner adapts; {self.method} adds virtual tokens instead")

    def peak_lr(self) -> float:
        group = "prompt" if self.method in PROMPT_LEARNING else "ia3" if self.method == "ia3" else "tuner"
        if group == "tuner" and self.task == "sft":
            group = "tuner-sft"
        return self.lr or DEFAULT_LR[group]

    def resume_values(self) -> dict:
        values = {k: v for k, v in opts.as_dict(self).items() if k in RESUME_KEYS}
        values["lr"] = self.peak_lr()
        return values


@dataclass
class NameOptions:
    name: str = option(positional=True, help="the adapter's name", metavar="NAME")


@dataclass
class SaveOptions(NameOptions):
    path: str = option(positional=True, help="folder to write (PEFT's files, safetensors)", metavar="PATH")


@dataclass
class LoadOptions:
    path: str = option(positional=True, help="a folder written by %lora save", metavar="PATH")
    name: str | None = option(None, "the name to load it under (default: its saved name)", flag="--as",
                              check=adapter_name)
    model: str | None = option(None, "the base it belongs to (default: the one it was trained on; another "
                                     "model is refused)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class MergeOptions(NameOptions):
    save: str | None = option(None, "also write the merged model to this folder", metavar="PATH")


@dataclass
class ListOptions:
    pass


class Adapter:
    """An adapter in the session: predicts, generates, saves, merges; switching to it is free."""

    def __init__(self, name: str):
        self.name = name

    @property
    def info(self) -> AdapterInfo:
        return hub().find(self.name)[1]

    def _as_result(self) -> "LoraResult":
        info = self.info
        return LoraResult(method="lora", task=info.task, label_names=info.label_names, adapter=self.name)

    def logits(self, texts) -> torch.Tensor:
        return self._as_result().logits(texts)

    def predict(self, texts) -> list[str]:
        return self._as_result().predict(texts)

    def predict_proba(self, texts):
        return self._as_result().predict_proba(texts)

    def generate(self, prompts, max_new_tokens: int = 64, **kwargs):
        return self._as_result().generate(prompts, max_new_tokens, **kwargs)

    def save(self, path: str | Path) -> Path:
        adapter_set, _ = hub().find(self.name)
        return adapter_set.save(self.name, Path(path))

    def merge(self, save: str | Path | None = None) -> TrainedResult:
        return merge_adapter(self.name, save)

    def __repr__(self) -> str:
        i = self.info
        return f"<Adapter {i.name}: {i.method} on {i.model} for {i.task}, {i.trainable_params:,} trainable>"

    def _repr_html_(self) -> str:
        return f"<code>{self.__repr__()[1:-1]}</code>"


@dataclass
class LoraResult(TrainedResult):
    """The run's metrics; predicts/generates with its adapter; `.save(path)` writes the adapter."""
    adapter: str = ""
    _adapter_folder: str = field(default="", repr=False)

    def _need_model(self):
        adapter_set, _ = hub().find(self.adapter)
        self._tokenizer = adapter_set.tokenizer
        return adapter_set.activate(self.adapter)

    def logits(self, texts) -> torch.Tensor:
        with hub().find(self.adapter)[0].lock:  # the adapter stays switched in while it predicts
            return super().logits(texts)

    def generate(self, prompts, max_new_tokens: int = 64, **kwargs):
        with hub().find(self.adapter)[0].lock:
            return super().generate(prompts, max_new_tokens, **kwargs)

    def save(self, path: str | Path) -> Path:
        folder = Adapter(self.adapter).save(path)
        self.artifacts["saved"] = str(folder)
        return folder

    def merge(self, save: str | Path | None = None) -> TrainedResult:
        return merge_adapter(self.adapter, save)

    def release(self) -> None:  # the hub owns the model; `%llm free` empties it
        pass


class LoraMethod(Method):
    name = "lora"
    summary = ("Parameter-efficient fine-tuning through PEFT: LoRA and its variants (rslora, dora, adalora), "
               "IA3, LoHa, LoKr, OFT, prefix tuning, P-tuning and prompt tuning, for classification or SFT. "
               "Adapters stay in the session: list, save, load, switch, merge, unload them.")
    Options = LoraOptions
    commands = {
        "adapters": Command(ListOptions, "list_adapters", "the adapters loaded in this session", False),
        "save": Command(SaveOptions, "save", "write an adapter to a folder (safetensors)", False),
        "load": Command(LoadOptions, "load", "load a saved adapter onto its base model", False),
        "use": Command(NameOptions, "use", "make an adapter the active one on its base", False),
        "merge": Command(MergeOptions, "merge", "a plain model with the adapter merged into its weights", False),
        "unload": Command(NameOptions, "unload", "drop an adapter from memory", False),
    }

    # ---- training -----------------------------------------------------------------------
    def run(self, o: LoraOptions, ctx) -> LoraResult:
        device = ctx.device(o.device)
        check_bits(o.bits, device)
        source = resolve(o.model)
        resume_dir = find_checkpoint(o.resume, ctx) if o.resume else None
        data = prepare_data(o, ctx)
        name = o.name or (saved_name(resume_dir) if resume_dir else None) or ctx.run_id
        if resume_dir:
            check_resumable(resume_dir, o.resume_values(), data.fingerprint)
        hub().check_free(name, resuming=resume_dir.parent.name if resume_dir else None)
        name_clash(name, o.method)
        progress = ctx.progress(f"lora · {o.method} · {source.short} · {o.task}")
        loaded = base_model(source, o.task, device, pick_dtype(device, o.dtype), o.bits, o.trust_remote_code)
        notes = list(data.notes)
        task = (sft_task(data, loaded.tokenizer, o, device, notes) if o.task == "sft"
                else TokenTask(data, loaded.tokenizer, o.max_length, device))
        total_steps = steps_per_epoch(len(task.lengths), o.batch_size, o.grad_accum) * o.epochs
        model, peft = self._adapt(o, loaded, data, name, total_steps, task, source)
        plan = trainable.report(model, f"{o.method} r={o.r}" if o.method not in PROMPT_LEARNING
                                else f"{o.method} {o.virtual_tokens} virtual tokens")
        save_run_options(ctx.run_dir, {**o.resume_values(), "adapter": name}, data.fingerprint)
        describe_run(ctx, progress, plan)
        realloc, rank_pattern = None, None
        if o.method == "adalora":
            realloc = lambda step: peft.base_model.update_and_allocate(step)  # noqa: E731
            config = peft.peft_config[name]
            # The best weights were masked by the rank pattern of their step: restore it with them.
            rank_pattern = WeightsState(save=lambda: {"rank_pattern": config.rank_pattern},
                                        load=lambda saved: setattr(config, "rank_pattern", saved["rank_pattern"]))
        loop = TrainLoop(model, task, train_config(o, device, o.peak_lr()), progress, ctx.run_dir, device,
                         before_zero_grad=realloc, weights_state=rank_pattern)
        if resume_dir:
            loop.resume(resume_dir)
        outcome = loop.run()
        info = AdapterInfo(name=name, method=o.method, peft_type=str(peft.peft_config[name].peft_type.value),
                           task=o.task, model=source.name, model_fingerprint=loaded.fingerprint,
                           dtype=dtype_name(loaded.dtype), trainable_params=plan.trainable,
                           label_names=getattr(data, "label_names", None),
                           pooling=getattr(model, "pooling", None),
                           head_dropout=o.head_dropout, bits=o.bits, origin=ctx.run_id)
        adapter_set = AdapterSet(model, peft, loaded.tokenizer, info.key, {name: info}, active=name)
        adapter_set.keep_head(name)
        folder = adapter_set.save(name, ctx.run_dir / "adapter")
        fields = result_fields(o, ctx, data, task, model, outcome, device, plan)
        fields["artifacts"]["adapter"] = str(folder)
        hub().adopt(adapter_set, name, folder)
        result = LoraResult(method=self.name, model=source.short, notes=notes + outcome.notes + plan.notes,
                            adapter=name,
                            _adapter_folder=str(folder), **fields)
        result.notes.append(f"adapter {name!r} is loaded: %lora use {name} · %lora save {name} PATH")
        return close_run(result, ctx, outcome)

    def _adapt(self, o, loaded, data, name, total_steps, task, source):
        """Wrap the base with the method's adapter; refuse (naming what works) when it can't train."""
        model, peft = wrap_new(o.method, o, loaded, data, name, total_steps, source)
        problem = smoke_test(model, task.batch(np.asarray(smoke_rows(task.lengths)), loaded.device))
        if problem:
            working = working_methods(loaded, o, data, source)
            raise UsageError(f"--method {o.method} does not train {source.short} for --task {o.task} ({problem}); "
                             f"methods that do: {', '.join(working) or 'none'}")
        return model, peft

    # ---- adapters in the session -----------------------------------------------------------
    def list_adapters(self, o: ListOptions, ctx):
        return hub().frame()

    def save(self, o: SaveOptions, ctx) -> Path:
        adapter_set, _ = hub().find(o.name)
        folder = adapter_set.save(o.name, Path(o.path))
        print(f"saved adapter {o.name!r} to {folder}")
        return folder

    def load(self, o: LoadOptions, ctx) -> Adapter:
        folder = Path(o.path).expanduser()
        if not folder.is_dir():
            raise UsageError(f"{o.path}: no such folder; pass a folder written by %lora save")
        info = read_info(folder)
        if o.model:
            asked = resolve(o.model)
            if asked.fingerprint != info.model_fingerprint.split("@")[0] and asked.name != info.model:
                raise UsageError(f"the adapter in {o.path} was trained on {info.model}, not {o.model}; "
                                 f"an adapter only fits the base it was trained on (drop --model or pass {info.model})")
        info.name = o.name or info.name
        info.origin = str(folder)
        hub().check_free(info.name)
        name_clash(info.name, info.method)
        existing = hub().compatible(info)
        if existing is not None:
            existing.load(folder, info)
            return Adapter(info.name)
        device = ctx.device(o.device)
        check_bits(info.bits, device)
        source = resolve(info.model)
        loaded = base_model(source, info.task, device, pick_dtype(device, info.dtype), info.bits)
        if loaded.fingerprint.split("@")[0] != info.model_fingerprint.split("@")[0]:
            raise UsageError(f"{info.model} now resolves to different weights than the adapter was trained on; "
                             "load the same base model")
        model, peft = wrap_saved(loaded, info, folder)
        adapter_set = AdapterSet(model, peft, loaded.tokenizer, info.key, {info.name: info})
        head = saved_head(folder, info)
        if head is not None:
            adapter_set.heads[info.name] = head
        adapter_set.activate(info.name)
        hub().sets.append(adapter_set)
        return Adapter(info.name)

    def use(self, o: NameOptions, ctx) -> Adapter:
        adapter_set, _ = hub().find(o.name)
        adapter_set.activate(o.name)
        return Adapter(o.name)

    def merge(self, o: MergeOptions, ctx) -> TrainedResult:
        return merge_adapter(o.name, o.save)

    def unload(self, o: NameOptions, ctx) -> None:
        hub().unload(o.name)
        print(f"unloaded adapter {o.name!r}")


def merge_adapter(name: str, save: str | Path | None) -> TrainedResult:
    """A plain model with the adapter merged in (a quantized base is dequantised first)."""
    adapter_set, info = hub().find(name)
    unquantized = adapter_set
    if info.bits:
        with tempfile.TemporaryDirectory() as tmp:
            folder = adapter_set.save(name, Path(tmp))
            device = next(adapter_set.model.parameters()).device
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            loaded = base_model(resolve(info.model), info.task, device, dtype)
            model, peft = wrap_saved(loaded, info, folder)
            unquantized = AdapterSet(model, peft, loaded.tokenizer, info.key, {name: info})
    merged = merged_copy(unquantized, name)
    result = TrainedResult(method="lora merge", task=info.task, label_names=info.label_names, model=info.model,
                           _model=merged, _tokenizer=adapter_set.tokenizer,
                           notes=[f"adapter {name!r} merged into a copy of {info.model}; the session's base is "
                                  "unchanged"])
    if save:
        result.save(save)
    return result


def saved_name(resume_dir: Path) -> str | None:
    import json
    saved = json.loads((resume_dir.parent / "run_options.json").read_text())
    return saved["options"].get("adapter")
