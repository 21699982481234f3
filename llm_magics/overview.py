"""What `%llm` shows: methods, models, device, recent runs."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from .models import where


@dataclass
class Overview:
    methods: list[dict] | None = None
    models: list[dict] | None = None
    device: dict | None = None
    runs: pd.DataFrame | None = None
    sections: tuple = ("methods", "models", "device", "runs")
    conflicts: list[str] = field(default_factory=list)

    def frames(self) -> dict[str, pd.DataFrame]:
        out = {}
        if "methods" in self.sections and self.methods is not None:
            out["methods"] = pd.DataFrame(self.methods)
        if "models" in self.sections and self.models is not None:
            out["models"] = pd.DataFrame([{**m, "resolves to": where(m["alias"])} for m in self.models])
        if "device" in self.sections and self.device is not None:
            out["device"] = pd.DataFrame([_readable(self.device)])
        if "runs" in self.sections and self.runs is not None:
            columns = [c for c in ("run_id", "created", "method", "model", "status", "test_accuracy",
                                   "val_accuracy", "trainable_params", "wall_s", "device") if c in self.runs]
            out["runs"] = self.runs[columns]
        return out

    def _repr_html_(self) -> str:
        parts = []
        for name, frame in self.frames().items():
            body = frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}") if len(frame) \
                else "<i>none yet</i>"
            parts.append(f"<h4 style='margin:6px 0'>{html.escape(name)}</h4>{body}")
        return "".join(parts)

    def __repr__(self) -> str:
        parts = []
        for name, frame in self.frames().items():
            parts.append(f"{name}:\n" + (frame.to_string(index=False) if len(frame) else "  none yet"))
        return "\n\n".join(parts)


def _readable(info: dict) -> dict:
    out = dict(info)
    for key in ("free_bytes", "total_bytes"):
        if key in out:
            out[key.replace("_bytes", "_gib")] = round(out.pop(key) / 2**30, 1)
    return out
