"""Adapters as the user holds them: `Adapter` handles, a training run's `LoraResult`,
loading a saved adapter onto its base (`%lora load`) and merging one (`%lora merge`)."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..engine.device import pick_dtype
from ..errors import UsageError
from ..models import resolve
from ..training import TrainedResult
from .build import base_model, check_bits, wrap_saved
from .hub import AdapterInfo, AdapterSet, hub, merged_copy, read_info, saved_head
from .methods import name_clash


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


def load_adapter(path: str, name: str | None, model: str | None, pick_device) -> Adapter:
    """A folder written by `%lora save`, onto its base: shared with adapters already on that
    base, or a fresh base. `pick_device()` gives the device when a base must load."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{path}: no such folder; pass a folder written by %lora save")
    info = read_info(folder)
    if model:
        asked = resolve(model)
        if asked.fingerprint != info.model_fingerprint.split("@")[0] and asked.name != info.model:
            raise UsageError(f"the adapter in {path} was trained on {info.model}, not {model}; "
                             f"an adapter only fits the base it was trained on (drop --model or pass {info.model})")
    info.name = name or info.name
    info.origin = str(folder)
    hub().check_free(info.name)
    name_clash(info.name, info.method)
    existing = hub().compatible(info)
    if existing is not None:
        existing.load(folder, info)
        return Adapter(info.name)
    device = pick_device()
    check_bits(info.bits, device)
    source = resolve(info.model)
    loaded = base_model(source, info.task, device, pick_dtype(device, info.dtype), info.bits)
    if loaded.fingerprint.split("@")[0] != info.model_fingerprint.split("@")[0]:
        raise UsageError(f"{info.model} now resolves to different weights than the adapter was trained on; "
                         "load the same base model")
    model_, peft = wrap_saved(loaded, info, folder)
    adapter_set = AdapterSet(model_, peft, loaded.tokenizer, info.key, {info.name: info})
    head = saved_head(folder, info)
    if head is not None:
        adapter_set.heads[info.name] = head
    adapter_set.activate(info.name)
    hub().sets.append(adapter_set)
    return Adapter(info.name)


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
    """The adapter name an interrupted run saved with its options."""
    saved = json.loads((resume_dir.parent / "run_options.json").read_text())
    return saved["options"].get("adapter")
