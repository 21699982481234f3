"""Settings users keep: default model, device, cache and run-store locations.

One process-wide `Settings` object is the source of truth. In IPython the
`LLMMagics` configurable (settable with `%config LLMMagics.device = "cpu"`)
writes into it; outside IPython, environment variables seed it:
LLM_MAGICS_HOME, LLM_MAGICS_RUNS, LLM_MAGICS_MODELS, LLM_MAGICS_DEVICE,
LLM_MAGICS_MODEL, LLM_MAGICS_PROGRESS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_home() -> Path:
    if os.environ.get("LLM_MAGICS_HOME"):
        return Path(os.environ["LLM_MAGICS_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm_magics"


@dataclass
class Settings:
    cache_dir: Path = field(default_factory=_default_home)
    runs_db: Path | None = field(
        default_factory=lambda: Path(p) if (p := os.environ.get("LLM_MAGICS_RUNS")) else None
    )
    # Converted models (the GGUF turned safetensors); shareable between homes.
    models_dir: Path | None = field(
        default_factory=lambda: Path(p) if (p := os.environ.get("LLM_MAGICS_MODELS")) else None
    )
    device: str = field(default_factory=lambda: os.environ.get("LLM_MAGICS_DEVICE", "auto"))
    default_model: str = field(default_factory=lambda: os.environ.get("LLM_MAGICS_MODEL", "minilm"))
    # auto | widget | html | text | none
    progress: str = field(default_factory=lambda: os.environ.get("LLM_MAGICS_PROGRESS", "auto"))

    @property
    def runs_path(self) -> Path:
        return Path(self.runs_db) if self.runs_db else Path(self.cache_dir) / "runs.sqlite"

    @property
    def models_path(self) -> Path:
        path = Path(self.models_dir) if self.models_dir else Path(self.cache_dir) / "models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def subdir(self, name: str) -> Path:
        path = Path(self.cache_dir) / name
        path.mkdir(parents=True, exist_ok=True)
        return path


_current = Settings()


def current() -> Settings:
    return _current


def reset() -> Settings:
    """Re-read the environment (tests point LLM_MAGICS_HOME at a temp dir)."""
    global _current
    _current = Settings()
    return _current
