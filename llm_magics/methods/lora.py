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

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import options as opts
from ..adapters import AdapterInfo, AdapterSet, hub, smoke_test
from ..adapters.build import base_model, check_bits, wrap_new
from ..adapters.checks import name_clash, smoke_rows, working_methods
from ..adapters.configs import KINDS, AdapterSpec, check_virtual_tokens
from ..adapters.session import load_adapter, merged_model
from ..common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions, file_path, plain_name
from ..engine.device import autocast_to, dtype_name, train_dtype
from ..engine.limits import folder_position_limit
from ..engine.loop import WeightsState, steps_per_epoch
from ..errors import UsageError
from ..method import Command
from ..models import trainable
from ..options import option, positive
from ..tasks.causal_lm import sft_task
from ..tasks.classify import TokenTask
from ..training import TRAINING_RESUME_KEYS, TaskOptions, TrainedResult, TrainingMethod, TrainingRun

__all__ = ["LoraMethod", "LoraOptions", "LoraResult", "Adapter"]


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


@dataclass(repr=False)
class LoraResult(TrainedResult):
    """The run's metrics; predicts/generates with its adapter; `.save(path)` writes the adapter."""
    adapter: str = ""

    def restore(self, options, rebuild) -> None:
        """A launched run's adapter joins the session's adapters, on a base on the CPU, as a one-process run
        leaves it (unless it is there already: a kernel that ran the workers in-process, in tests)."""
        super().restore(options, rebuild)
        if self.adapter not in hub().names():
            load_adapter(self.artifacts["adapter"], self.adapter, None, lambda: torch.device("cpu"))

    def _need_model(self):
        adapter_set, _ = hub().find(self.adapter)
        self._tokenizer = adapter_set.tokenizer
        return adapter_set.activate(self.adapter)

    def _computes_in(self, model) -> torch.dtype | None:
        """From the base the adapter sits on, as a run on it computes (`train_dtype`'s rule: a bf16 base under bf16
        autocast): the run's Result and the same adapter loaded again predict alike."""
        return train_dtype(next(model.parameters()).device, None, frozen=next(model.parameters()).dtype)

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


def merge_adapter(name: str, save: str | Path | None) -> TrainedResult:
    """A plain model with the adapter merged in, as a Result that predicts, generates and saves."""
    adapter_set, info = hub().find(name)
    result = TrainedResult(method="lora merge", task=info.task, label_names=info.label_names, model=info.model,
                           _model=merged_model(name), _tokenizer=adapter_set.tokenizer,
                           notes=[f"adapter {name!r} merged into a copy of {info.model}; the session's base is "
                                  "unchanged"])
    if save:
        result.save(save)
    return result


def saved_name(resume_dir: Path) -> str | None:
    """The adapter name an interrupted run saved with its options."""
    saved = json.loads((resume_dir.parent / "run_options.json").read_text())
    return saved["options"].get("adapter")


def _bits(value) -> str | None:
    return None if value in (None, 4, 8) else f"is 4 or 8, got {value}"


@dataclass
class LoraOptions(ModelOptions, DataOptions, RunOptions, TrainingOptions, TaskOptions):
    method: str = option("lora", "the PEFT method: " + ", ".join(f"{k} ({v.label})" for k, v in KINDS.items()),
                         choices=tuple(KINDS))
    r: int = option(8, "rank (lora, rslora, dora, loha, lokr; adalora's starting rank)", check=positive)
    alpha: float | None = option(None, "scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.05, "dropout on the adapter's input", check=opts.dropout_rate)
    target: list[str] = option(["all-linear"], "layers to adapt: all-linear (every linear layer in the blocks) "
                                               "or names such as q_proj,v_proj", metavar="NAMES")
    target_r: int | None = option(None, "adalora: the average rank it prunes to (default: r / 2)", check=positive,
                                  applies=opts.when("method", "adalora"))
    block_size: int = option(32, "oft: block size of the orthogonal matrices", check=positive,
                             applies=opts.when("method", "oft"))
    virtual_tokens: int = option(20, "prefix, ptuning, prompt: number of virtual tokens",
                                 applies=opts.when("method", "prefix", "ptuning", "prompt"),
                                 check=opts.bounded(positive, "at most half the model's positions"))
    encoder_hidden: int = option(128, "ptuning: hidden size of the prompt encoder", check=positive,
                                 applies=opts.when("method", "ptuning"))
    init_text: str | None = option(None, "prompt: initialise the virtual tokens from this text", metavar="TEXT",
                                   applies=opts.when("method", "prompt"))
    bits: int | None = option(None, "QLoRA: load the frozen base in 4 or 8 bits (bitsandbytes, CUDA only)",
                              check=_bits)
    name: str | None = option(None, "the adapter's name in the session (default: the run id)", check=plain_name)

    def validate(self) -> None:
        if self.init_text and self.method != "prompt":
            raise UsageError("--init-text initialises prompt tuning; use it with --method prompt")
        if self.bits and KINDS[self.method].prompt_learning:
            raise UsageError(f"--bits quantizes the layers a tuner adapts; {self.method} adds virtual tokens instead")


@dataclass
class NameOptions:
    name: str = option(positional=True, help="the adapter's name", metavar="NAME", check=plain_name)


@dataclass
class SaveOptions(NameOptions):
    path: str = option(positional=True, help="folder to write (PEFT's files, safetensors)", metavar="PATH",
                       check=file_path)


@dataclass
class LoadOptions:
    path: str = option(positional=True, help="a folder written by %lora save", metavar="PATH")
    name: str | None = option(None, "the name to load it under (default: its saved name)", flag="--as",
                              check=plain_name)
    model: str | None = option(None, "the base it belongs to (default: the one it was trained on; another "
                                     "model is refused)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


@dataclass
class MergeOptions(NameOptions):
    save: str | None = option(None, "also write the merged model to this folder", metavar="PATH",
                              check=file_path)


@dataclass
class ListOptions:
    pass


class LoraMethod(TrainingMethod):
    name = "lora"
    summary = ("Parameter-efficient fine-tuning through PEFT: LoRA and its variants (rslora, dora, adalora), "
               "IA3, LoHa, LoKr, OFT, prefix tuning, P-tuning and prompt tuning, for classification or SFT. "
               "Adapters stay in the session: list, save, load, switch, merge, unload them.")
    Options = LoraOptions
    seed_controls = TrainingMethod.seed_controls + ("adapter init",)   # adapters/build.py seeds its weights
    commands = {
        "adapters": Command(ListOptions, "list_adapters", "the adapters loaded in this session", False),
        "save": Command(SaveOptions, "save", "write an adapter to a folder (safetensors)", False),
        "load": Command(LoadOptions, "load", "load a saved adapter onto its base model", False),
        "use": Command(NameOptions, "use", "make an adapter the active one on its base", False),
        "merge": Command(MergeOptions, "merge", "a plain model with the adapter merged into its weights", False),
        "unload": Command(NameOptions, "unload", "drop an adapter from memory", False),
    }

    result_class = LoraResult

    # ---- training -----------------------------------------------------------------------
    def peak_lr(self, o: LoraOptions) -> float:
        return o.lr or KINDS[o.method].default_lr(o.task)

    def resume_values(self, o: LoraOptions) -> dict:
        keys = TRAINING_RESUME_KEYS + ("method", "bits", "dtype") + KINDS[o.method].resume_keys
        values = {k: v for k, v in opts.as_dict(o).items() if k in keys}
        values["lr"] = self.peak_lr(o)
        return values

    def title(self, o: LoraOptions, source) -> str:
        return f"lora · {o.method} · {source.short} · {o.task}"

    def check(self, run: TrainingRun) -> None:
        o = run.options
        check_bits(o.bits, run.device)
        context = folder_position_limit(run.source.path) if KINDS[o.method].prompt_learning else None
        if context:   # before the base loads (a hub id: once it has): millions of them would not fit in memory
            check_virtual_tokens(o.virtual_tokens, context)
        run.adapter = o.name or (saved_name(run.resume_dir) if run.resume_dir else None) or run.ctx.run_id
        hub().check_free(run.adapter, resuming=run.resume_dir.parent.name if run.resume_dir else None)
        name_clash(run.adapter, o.method)
        run.run_options["adapter"] = run.adapter

    def prepare(self, run: TrainingRun) -> None:
        """A fresh base wrapped with the adapter; refused (naming what works) when it can't train."""
        o, spec = run.options, AdapterSpec.from_options(run.options)
        loaded = base_model(run.source, o.task, run.device, self.load_dtype(run, frozen=True), o.bits,
                            o.trust_remote_code)
        task = (sft_task(run.data, loaded.tokenizer, o, run.device, run.notes) if o.task == "sft"
                else TokenTask(run.data, loaded.tokenizer, o.max_length, run.device, notes=run.notes))
        total_steps = steps_per_epoch(len(task.lengths), o.batch_size, o.grad_accum) * o.epochs
        labels = len(getattr(run.data, "label_names", None) or [])
        model, peft = wrap_new(spec, loaded, labels, run.adapter, total_steps, run.source)
        self.loaded_in(run, loaded.dtype)
        with autocast_to(run.device, run.autocast):   # as the run will train it
            problem = smoke_test(model, task.batch(np.asarray(smoke_rows(task.lengths)), loaded.device))
        if problem:
            working = working_methods(loaded, spec, run.data, run.source, o.max_length)
            raise UsageError(f"--method {o.method} does not train {run.source.short} for --task {o.task} ({problem}); "
                             f"methods that do: {', '.join(working) or 'none'}")
        run.loaded, run.model, run.tokenizer, run.engine_task, run.peft = loaded, model, loaded.tokenizer, task, peft
        run.plan = trainable.report(model, KINDS[o.method].describe(spec))
        if o.method == "adalora":
            config = peft.peft_config[run.adapter]
            # The best weights were masked by the rank pattern of their step: restore it with them.
            run.loop_hooks = dict(
                before_zero_grad=lambda step: peft.base_model.update_and_allocate(step),
                weights_state=WeightsState(save=lambda: {"rank_pattern": config.rank_pattern},
                                           load=lambda saved: setattr(config, "rank_pattern", saved["rank_pattern"])))

    def build_result(self, run: TrainingRun, outcome) -> LoraResult:
        o, name, peft, model = run.options, run.adapter, run.peft, run.model
        info = AdapterInfo(name=name, method=o.method, peft_type=str(peft.peft_config[name].peft_type.value),
                           task=o.task, model=run.source.name, model_fingerprint=run.loaded.fingerprint,
                           dtype=dtype_name(run.loaded.dtype), trainable_params=run.plan.trainable,
                           label_names=getattr(run.data, "label_names", None),
                           pooling=getattr(model, "pooling", None),
                           head_dropout=o.head_dropout, bits=o.bits, origin=run.ctx.run_id)
        adapter_set = AdapterSet(model, peft, run.loaded.tokenizer, info.key, {name: info}, active=name)
        adapter_set.keep_head(name)
        folder = adapter_set.save(name, run.ctx.run_dir / "adapter")
        # Scored before the hub adopts the set (it may share another set's base afterwards).
        result = super().build_result(run, outcome)
        result.artifacts["adapter"] = str(folder)
        result.adapter = name
        result._model = None  # the hub owns the model; the Result reaches it through the adapter
        hub().adopt(info, folder, lambda: adapter_set)
        result.notes.append(f"adapter {name!r} is loaded: %lora use {name} · %lora save {name} PATH")
        return result

    def finish(self, run: TrainingRun, result: LoraResult) -> None:
        pass  # the hub holds the model (`%llm free` empties it), not the Result

    # ---- adapters in the session -----------------------------------------------------------
    def list_adapters(self, o: ListOptions, ctx):
        return hub().frame()

    def save(self, o: SaveOptions, ctx) -> Path:
        adapter_set, _ = hub().find(o.name)
        folder = adapter_set.save(o.name, Path(o.path))
        print(f"saved adapter {o.name!r} to {folder}")
        return folder

    def load(self, o: LoadOptions, ctx) -> Adapter:
        return Adapter(load_adapter(o.path, o.name, o.model, lambda: ctx.device(o.device),
                                    asked_device=o.device != "auto"))

    def use(self, o: NameOptions, ctx) -> Adapter:
        adapter_set, _ = hub().find(o.name)
        adapter_set.activate(o.name)
        return Adapter(o.name)

    def merge(self, o: MergeOptions, ctx) -> TrainedResult:
        return merge_adapter(o.name, o.save)

    def unload(self, o: NameOptions, ctx) -> None:
        hub().unload(o.name)
        print(f"unloaded adapter {o.name!r}")
