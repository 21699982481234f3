"""What a run record holds: its fields, and options as the plain values it keeps.

A ground-level leaf, so that the contract (`method.Result.record`), the run store (`runs/store.py`, whose
columns these are) and the launcher (`launch/spec.py`, which hands the options to the workers) share one
list and one conversion without importing each other.
"""
from __future__ import annotations

import dataclasses
from typing import Any

# The fields of a Result the run store keeps, in its column order.
RECORD_KEYS = ("run_id", "method", "command", "model", "status", "options", "data_fingerprint", "metrics",
               "trainable_params", "total_params", "wall_s", "rows_per_s", "tokens_per_s",
               "peak_mem_bytes", "device", "dtype", "artifacts", "sweep_id", "parent_id")


def run_title(method: str, command: str | None) -> str:
    """A run's method as the user typed it and sees it in tables: "probe", "rlhf dpo" (method and
    subcommand are kept apart in the record; this is the one place they are joined)."""
    return f"{method} {command}" if command else method


def as_dict(options) -> dict[str, Any]:
    """Options as plain JSON-able values (objects such as DataFrames by description)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if value is None or isinstance(value, (bool, int, float, str)):
            out[f.name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
            out[f.name] = list(value)
        else:
            out[f.name] = f"<{type(value).__name__}>"
    return out
