"""What `%llm` shows: methods, models, device, recent runs, and where to go next; `%llm help`."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from .models import where
from .progress.theme import MUTED, scroll_box


@dataclass
class Overview:
    methods: list[dict] | None = None
    models: list[dict] | None = None
    device: dict | None = None
    runs: pd.DataFrame | None = None
    sections: tuple = ("methods", "models", "device", "runs")
    conflicts: list[str] = field(default_factory=list)
    next_steps: dict[str, str] = field(default_factory=dict)   # %llm command → what it does

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
                                   "val_accuracy", "trainable_params", "wall_s", "sweep_id", "device")
                       if c in self.runs]
            out["runs"] = self.runs[columns]
        return out

    def _repr_html_(self) -> str:
        parts = []
        for name, frame in self.frames().items():
            body = scroll_box(frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")) \
                if len(frame) else "<i>none yet</i>"
            parts.append(f"<h4 style='margin:6px 0'>{html.escape(name)}</h4>{body}")
        if self.next_steps:
            parts.append("<h4 style='margin:6px 0'>next</h4>" + _commands_html(self.next_steps))
        return "".join(parts)

    def __repr__(self) -> str:
        parts = []
        for name, frame in self.frames().items():
            parts.append(f"{name}:\n" + (frame.to_string(index=False) if len(frame) else "  none yet"))
        if self.next_steps:
            parts.append("next:\n" + _commands_text(self.next_steps))
        return "\n\n".join(parts)


@dataclass
class Commands:
    """`%llm help`: every `%llm` command with one line on what it does."""
    commands: dict[str, str]

    def _repr_html_(self) -> str:
        return "<b>%llm commands</b>" + _commands_html(self.commands)

    def __repr__(self) -> str:
        return "%llm commands:\n" + _commands_text(self.commands)


def _call(word: str) -> str:
    return f"%llm {word}".rstrip()


def _commands_text(commands: dict[str, str]) -> str:
    width = max(len(_call(w)) for w in commands) + 2
    return "\n".join(f"  {_call(w):<{width}}{what}" for w, what in commands.items())


def _commands_html(commands: dict[str, str]) -> str:
    rows = "".join(f"<tr><td style='white-space:nowrap;padding:1px 8px 1px 0'><code>{html.escape(_call(w))}"
                   f"</code></td><td style='color:{MUTED};padding:1px 0'>{html.escape(what)}</td></tr>"
                   for w, what in commands.items())
    return scroll_box(f"<table>{rows}</table>")


def _readable(info: dict) -> dict:
    out = dict(info)
    for key in ("free_bytes", "total_bytes"):
        if key in out:
            out[key.replace("_bytes", "_gib")] = round(out.pop(key) / 2**30, 1)
    return out
