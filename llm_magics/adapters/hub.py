"""Adapters in the session: several on one base, switched without reloading it.

An `AdapterSet` is one base model in memory with every adapter of one PEFT
type for one task loaded on it (PEFT cannot mix types on one model); the
`Hub` holds the sets and finds adapters by name. Saved adapters are PEFT's own
folders (adapter_config.json + adapter_model.safetensors) plus our
`llm_magics_adapter.json`, which says which base and task they belong to,
and `llm_magics_checksums.json` (sizes and SHA-256 of the adapter's files).
For classification with a tuner, the head is one of PEFT's `modules_to_save`;
with prompt learning the head sits outside PEFT and is saved beside it.

A save swaps the folder whole (`safe_io.atomic_folder`): the old adapter stays
whole until the new one is complete, and files the adapter does not own (a
person's notes, eval outputs) are kept. A load checks the folder first: the
checksums, our metadata (no unknown or mistyped field) and the weights'
safetensors header; a damaged adapter is one UsageError naming the file.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import re
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import UsageError, did_you_mean
from ..models.classifier import SequenceClassifier
from ..safe_io import STALE_LEGACY_S, atomic_folder, clean_stale, verify_manifest, write_manifest
from .methods import METHODS, PROMPT_LEARNING

META = "llm_magics_adapter.json"
HEAD = "classifier_head.safetensors"
# What an adapter folder written before checksums owns (PEFT's files and ours); anything else in it is
# the user's and survives a save over it.
LEGACY_OWNED = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md", META, HEAD)


@dataclass
class AdapterInfo:
    name: str
    method: str
    peft_type: str
    task: str
    model: str                    # the --model the base was resolved from
    model_fingerprint: str
    dtype: str
    trainable_params: int
    label_names: list[str] | None = None
    pooling: str | None = None
    head_dropout: float = 0.1
    bits: int | None = None
    origin: str = ""              # the run that trained it, or the folder it was loaded from

    @property
    def key(self) -> tuple:
        return (self.model_fingerprint, self.task, tuple(self.label_names or ()), self.pooling, self.peft_type,
                self.dtype, self.bits)


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
        """PEFT's adapter folder for `name`, plus our metadata (and the head, for prompt learning).

        Written beside the target, checksummed, and swapped in whole: a failed or killed save
        leaves what was there before, and files in the folder that the adapter does not own stay.
        """
        folder = Path(folder).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file; %lora save writes a folder: pass a new folder's path")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / META).exists():
            raise UsageError(f"{folder} exists and holds something other than an adapter; pick a new folder")
        clean_legacy_staging(folder)
        with atomic_folder(folder, keep_others=True, owned=LEGACY_OWNED) as staging:
            with self.using(name), tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
                # AdaLoRA may prune a layer's rank to 0; PEFT then warns as if a sharded save were incomplete.
                warnings.filterwarnings("ignore", message=".*have invalid shape.*")
                self.peft.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
                written = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
                for item in written.iterdir():
                    if item.is_file():
                        shutil.copy2(item, staging / item.name)
            if name in self.heads:
                save_file({k: v.cpu().contiguous() for k, v in self.heads[name].items()}, str(staging / HEAD))
            (staging / META).write_text(json.dumps(asdict(self.infos[name]), indent=2))
            write_manifest(staging)
        return folder

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


def saved_head(folder: Path, info: AdapterInfo) -> dict | None:
    """A prompt-learning classifier's head, saved beside its adapter (tuners keep theirs inside PEFT)."""
    if info.method in PROMPT_LEARNING and info.task == "classify" and (folder / HEAD).exists():
        return load_file(str(folder / HEAD))
    return None


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

    def adopt(self, adapter_set: AdapterSet, name: str, saved: Path) -> AdapterSet:
        """A freshly trained set joins the hub; onto an existing base of its kind when there is one.
        An adapter of the same name (the interrupted run a resumed one replaces) goes first."""
        if name in self.names():
            self.unload(name)
        existing = self.compatible(adapter_set.infos[name])
        if existing is None:
            self.sets.append(adapter_set)
            return adapter_set
        existing.load(saved, adapter_set.infos[name])  # one base in memory, not two
        return existing

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


def read_info(folder: Path) -> AdapterInfo:
    """The metadata of a saved adapter, after checking the folder: a damaged one is one UsageError."""
    folder = Path(folder).expanduser()
    with contextlib.suppress(OSError):
        clean_stale(folder)
        clean_legacy_staging(folder)
    path = folder / META
    if not path.exists():
        if (folder / "adapter_config.json").exists():
            raise UsageError(f"{folder} is a PEFT adapter without llm-magics metadata; %lora load needs one saved "
                             "by %lora save (it records the base model and task)")
        raise UsageError(f"{folder} holds no adapter (no {META}); pass a folder written by %lora save")
    again = "save it again with %lora save (or train it again)"
    problems = verify_manifest(folder)
    if problems:
        raise UsageError(f"the adapter in {folder} is damaged: {problems[0]}; {again}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path} is not valid JSON; {again}") from None
    problem = info_problem(data)
    if problem:
        raise UsageError(f"{path} is not a valid adapter description ({problem}); {again}")
    problem = weights_problem(folder)
    if problem:
        raise UsageError(f"the adapter in {folder} is damaged: {problem}; {again}")
    return AdapterInfo(**data)


def clean_legacy_staging(folder: Path) -> None:
    """Remove `.NAME-xxxxxxxx` staging folders that saves before safe_io left when interrupted."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}-[a-z0-9_]{{8}}")
    if not folder.parent.is_dir():
        return
    for entry in folder.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink() \
                and time.time() - entry.stat().st_mtime > STALE_LEGACY_S \
                and {p.name for p in entry.iterdir()} <= set(LEGACY_OWNED):
            shutil.rmtree(entry, ignore_errors=True)


_INFO_TYPES = {
    "name": (str,), "method": (str,), "peft_type": (str,), "task": (str,), "model": (str,),
    "model_fingerprint": (str,), "dtype": (str,), "trainable_params": (int,), "label_names": (list, type(None)),
    "pooling": (str, type(None)), "head_dropout": (int, float), "bits": (int, type(None)), "origin": (str,),
}


def info_problem(data) -> str | None:
    """What makes `data` no AdapterInfo that %lora save writes (None: it is one)."""
    if not isinstance(data, dict):
        return "not a JSON object"
    fields = AdapterInfo.__dataclass_fields__
    unknown = sorted(set(data) - set(fields))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}"
    missing = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING]
    if missing:
        return f"missing {', '.join(missing)}"
    for key, kinds in _INFO_TYPES.items():
        value = data.get(key, fields[key].default)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"{key} is {value!r}"
    if data["method"] not in METHODS:
        return f"method {data['method']!r} is not one of {', '.join(METHODS)}"
    if data.get("bits") not in (None, 4, 8) or data["trainable_params"] < 0:
        return "bits or trainable_params out of range"
    if not 0 <= data.get("head_dropout", 0.1) < 1:
        return f"head_dropout is {data['head_dropout']!r}"
    if data.get("label_names") is not None and not all(isinstance(x, str) for x in data["label_names"]):
        return "label_names are not all texts"
    return None


def weights_problem(folder: Path) -> str | None:
    """PEFT's config must be a JSON object and the weights a whole safetensors file (None: they are)."""
    from safetensors import safe_open
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except FileNotFoundError:
        return "adapter_config.json is missing"
    except (OSError, ValueError):
        return "adapter_config.json is not valid JSON"
    if not isinstance(config, dict):
        return "adapter_config.json is not a JSON object"
    for file in ("adapter_model.safetensors", HEAD):
        if file == HEAD and not (folder / HEAD).exists():
            continue
        try:
            with safe_open(str(folder / file), "pt") as handle:
                list(handle.keys())
        except FileNotFoundError:
            return f"{file} is missing"
        except Exception:   # noqa: BLE001 - safetensors raises its own error kinds for a bad header
            return f"{file} is not a whole safetensors file (truncated or overwritten)"
    return None


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
