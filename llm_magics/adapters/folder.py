"""A saved adapter's folder: what it holds, writing it whole, and checking it before a load.

Saved adapters are PEFT's own folders (adapter_config.json +
adapter_model.safetensors) plus our `llm_magics_adapter.json` (an
`AdapterInfo`: which base and task the adapter belongs to) and
`llm_magics_checksums.json` (sizes and SHA-256 of the adapter's files). For
classification with a tuner, the head is one of PEFT's `modules_to_save`; with
prompt learning the head sits outside PEFT and is saved beside it.

A save swaps the folder whole (`safe_io.atomic_folder`): the old adapter stays
whole until the new one is complete, and files the adapter does not own (a
person's notes, eval outputs) are kept. A load checks the folder first: the
checksums, our metadata (no unknown or mistyped field) and the weights'
safetensors header; a damaged adapter is one UsageError naming the file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..safe_io import STALE_LEGACY_S, atomic_folder, clean_stale, verify_manifest, write_manifest
from .configs import METHODS, PROMPT_LEARNING

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


def write_adapter(peft, name: str, info: AdapterInfo, head: dict | None, folder: Path) -> Path:
    """PEFT's adapter folder for `name` (active in `peft`), plus our metadata (and the head, for prompt learning).

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
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # AdaLoRA may prune a layer's rank to 0; PEFT then warns as if a sharded save were incomplete.
            warnings.filterwarnings("ignore", message=".*have invalid shape.*")
            peft.save_pretrained(tmp, selected_adapters=[name], safe_serialization=True)
            written = Path(tmp) / name if (Path(tmp) / name).is_dir() else Path(tmp)
            for item in written.iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
        if head is not None:
            save_file({k: v.cpu().contiguous() for k, v in head.items()}, str(staging / HEAD))
        (staging / META).write_text(json.dumps(asdict(info), indent=2))
        write_manifest(staging)
    return folder


def saved_head(folder: Path, info: AdapterInfo) -> dict | None:
    """A prompt-learning classifier's head, saved beside its adapter (tuners keep theirs inside PEFT)."""
    if info.method in PROMPT_LEARNING and info.task == "classify" and (folder / HEAD).exists():
        return load_file(str(folder / HEAD))
    return None


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
