"""The adapters loaded now: several on one base, switched without reloading it.

An `AdapterSet` is one base model in memory with every adapter of one PEFT
type for one task loaded on it (PEFT cannot mix types on one model); the
`Hub` holds the sets, finds adapters by name, and is the one way an adapter
joins the session (`Hub.adopt`: a trained one, or one `load_adapter` reads
from its folder). What a saved adapter's folder holds is `folder.py`'s.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..engine.device import pick_dtype
from ..errors import UsageError, did_you_mean
from ..models import resolve
from ..models.classifier import SequenceClassifier
from .build import base_model, check_bits, wrap_saved
from .checks import name_clash
from .configs import PROMPT_LEARNING
from .folder import AdapterInfo, read_info, saved_head, write_adapter


@dataclass
class AdapterSet:
    model: nn.Module              # what to call: a PeftModel, or a SequenceClassifier around one
    peft: Any                     # the PeftModel holding the adapters
    tokenizer: Any
    key: tuple
    infos: dict[str, AdapterInfo] = field(default_factory=dict)
    heads: dict[str, dict] = field(default_factory=dict)   # prompt-learning classifiers: a head per adapter
    active: str | None = None
    # Held while an adapter is switched in and used: a background run adopting a new adapter onto
    # this base must not switch it under a prediction.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def activate(self, name: str) -> nn.Module:
        with self.lock:
            if self.active != name:
                self.peft.set_adapter(name)
                if name in self.heads:
                    self.model.head.load_state_dict(self.heads[name])
                self.active = name
            return self.model

    @contextlib.contextmanager
    def using(self, name: str):
        """The model with `name` active, kept so until the block ends."""
        with self.lock:
            yield self.activate(name)

    def keep_head(self, name: str) -> None:
        if isinstance(self.model, SequenceClassifier) and self.infos[name].method in PROMPT_LEARNING:
            self.heads[name] = {k: v.detach().clone() for k, v in self.model.head.state_dict().items()}

    def save(self, name: str, folder: Path) -> Path:
        """`name`'s folder (folder.py), written with it switched in."""
        with self.using(name):
            return write_adapter(self.peft, name, self.infos[name], self.heads.get(name), folder)

    def load(self, folder: Path, info: AdapterInfo) -> None:
        """Add a saved adapter to this base under `info.name`."""
        with self.lock:
            self.peft.load_adapter(str(folder), adapter_name=info.name, is_trainable=False)
            self.infos[info.name] = info
            head = saved_head(folder, info)
            if head is not None:
                self.heads[info.name] = head
            self.active = None
            self.activate(info.name)

    def drop(self, name: str) -> None:
        with self.lock:
            others = [n for n in self.infos if n != name]
            if others:
                self.activate(others[0])
                self.peft.delete_adapter(name)
            self.infos.pop(name)
            self.heads.pop(name, None)


class Hub:
    """Every adapter in this session, by name."""

    def __init__(self):
        self.sets: list[AdapterSet] = []

    def names(self) -> list[str]:
        return [name for s in self.sets for name in s.infos]

    def find(self, name: str) -> tuple[AdapterSet, AdapterInfo]:
        for adapter_set in self.sets:
            if name in adapter_set.infos:
                return adapter_set, adapter_set.infos[name]
        loaded = self.names()
        raise UsageError(f"no adapter named {name!r} is loaded" + (did_you_mean(name, loaded) if loaded else
                                                                   "; none is (train one with %lora, or %lora load PATH)"))

    def check_free(self, name: str, resuming: str | None = None) -> None:
        """Refuse a taken name; a resumed run may take back its own interrupted adapter's."""
        if name in self.names() and not (resuming and self.find(name)[1].origin == resuming):
            raise UsageError(f"an adapter named {name!r} is already loaded; pick another name "
                             f"(--as / --name), or `%lora unload {name}` first")

    def compatible(self, info: AdapterInfo) -> AdapterSet | None:
        return next((s for s in self.sets if s.key == info.key), None)

    def adopt(self, info: AdapterInfo, folder: Path, fresh) -> AdapterSet:
        """The one way an adapter joins the session: onto a loaded base of its kind when there is one (one
        base in memory, not two), else on the set `fresh()` gives. `folder` holds the adapter, saved.
        An adapter of the same name (the interrupted run a resumed one replaces) goes first."""
        if info.name in self.names():
            self.unload(info.name)
        existing = self.compatible(info)
        if existing is not None:
            existing.load(folder, info)
            return existing
        adapter_set = fresh()
        self.sets.append(adapter_set)
        return adapter_set

    def unload(self, name: str) -> None:
        adapter_set, _ = self.find(name)
        adapter_set.drop(name)
        if not adapter_set.infos:
            self.sets.remove(adapter_set)

    def frame(self) -> pd.DataFrame:
        rows = [{"name": i.name, "method": i.method, "task": i.task, "model": i.model,
                 "trainable_params": i.trainable_params, "active": s.active == i.name, "origin": i.origin}
                for s in self.sets for i in s.infos.values()]
        return pd.DataFrame(rows, columns=["name", "method", "task", "model", "trainable_params", "active",
                                           "origin"])

    def release(self) -> None:
        self.sets.clear()


_hub: Hub | None = None


def hub() -> Hub:
    """The session's hub; `%llm free` empties it."""
    global _hub
    if _hub is None:
        from ..models import hold
        _hub = Hub()
        hold(_hub)
    return _hub


def merged_copy(adapter_set: AdapterSet, name: str) -> nn.Module:
    """A plain model with `name` merged into its weights; the session's base stays as it is."""
    info = adapter_set.infos[name]
    if info.method in PROMPT_LEARNING:
        raise UsageError(f"{name} is a {info.method} adapter: virtual tokens have no weights to merge into; "
                         "use it as an adapter (%lora use)")
    with adapter_set.using(name):
        clone = copy.deepcopy(adapter_set.peft)
    for other in [n for n in adapter_set.infos if n != name]:
        clone.delete_adapter(other)
    with torch.no_grad():
        return clone.merge_and_unload()


def load_adapter(path: str, name: str | None, model: str | None, pick_device, asked_device: bool = False) -> str:
    """A folder written by `%lora save`, onto its base: shared with adapters already on that
    base, or a fresh base. `pick_device()` gives the device when a base must load; `asked_device`: the
    user named one, so a shared base elsewhere is refused rather than silently used. Returns its name."""
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
    shared = hub().compatible(info)
    if asked_device and shared is not None:
        on, asked = next(shared.model.parameters()).device, pick_device()
        if (on.type, on.index or 0) != (asked.type, asked.index or 0):
            raise UsageError(f"--device {asked}: its base {info.model} is already loaded on {on} and adapters share "
                             f"it; drop --device, or %llm free first to load the base on {asked}")
    hub().adopt(info, folder, lambda: saved_set(info, folder, pick_device()))
    return info.name


def saved_set(info: AdapterInfo, folder: Path, device) -> AdapterSet:
    """A fresh base on `device` with the saved adapter in `folder` on it."""
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
    return adapter_set


def merged_model(name: str) -> nn.Module:
    """A plain model with the adapter merged in (a quantized base is dequantised first)."""
    adapter_set, info = hub().find(name)
    if not info.bits:
        return merged_copy(adapter_set, name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = adapter_set.save(name, Path(tmp))
        device = next(adapter_set.model.parameters()).device
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        loaded = base_model(resolve(info.model), info.task, device, dtype)
        model, peft = wrap_saved(loaded, info, folder)
        return merged_copy(AdapterSet(model, peft, loaded.tokenizer, info.key, {name: info}), name)
