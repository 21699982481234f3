"""The one module a plugin imports: what a method is made of, and what it may use.

A method is a `Method` subclass with a `name`, a `summary`, an `Options`
dataclass (fields declared with `option`, usually inheriting the bundles below)
and a `run(options, ctx) -> Result`. Register it under the entry-point group
`llm_magics.methods`; the entry point's name must equal `Method.name`
(registration refuses a mismatch):

    [project.entry-points."llm_magics.methods"]
    echo = "my_package:EchoMethod"

A method has only the options its class declares. The runner acts on three
when they are declared: `--out NAME` (from `RunOptions`: bind the Result to
a variable), `--bg` (it comes with `TrainingOptions`, so only training methods
have it: run in a thread, return a `RunHandle`) and `--device` (from `ModelOptions`: the runner measures memory
on it; `ctx.device(options.device)` picks it). Declare
the bundles you need and they come with them; `%name?` help, the Python API
(`llm_magics.api.name(...)`), `%llm tune` forms and validation all come from
the one declaration.

Training methods: build on `llm_magics.training` (its `run()` does the set-up). It also holds what a
method of several phases needs (`phases()` returning `Phase`s: one live view, one Stop, --resume per
phase), the dtype rules (`train_dtype`, `pick_dtype`), the head-only fast path on %probe's feature cache
(`prepare_head_only`) and the `resume_values` hook.
Tests: `llm_magics.testing` (tiny models, an isolated-home shell).
The guide: docs/plugins.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import options as _options
from .common_options import DataOptions, ModelOptions, RunOptions, TrainingOptions
from .data import TaskData, infer_label_column, infer_text_column, load_frame, load_splits, prepare_classification
from .data.sft import prepare_sft
from .errors import UsageError
from .method import RECORD_KEYS, Command, Method, Result
from .models import hold, load_model, resolve
from .options import fraction, non_negative, option, positive
from .progress import Progress
from .runner import RunContext, RunHandle

if TYPE_CHECKING:   # at run time `__getattr__` below imports them: the training base loads torch
    from .training import ClassificationOptions, SftOptions, TaskOptions

dropout_rate = _options.dropout_rate
seed = _options.seed

__all__ = [
    # what a method is
    "Method", "Command", "Result", "RunContext", "RunHandle", "RECORD_KEYS", "UsageError",
    # options: one declaration (a dataclass), its checks, the shared bundles
    "dataclass", "field", "option", "positive", "non_negative", "fraction", "dropout_rate", "seed",
    "ModelOptions", "DataOptions", "RunOptions", "TrainingOptions",
    "ClassificationOptions", "SftOptions", "TaskOptions",
    # data and models
    "prepare_classification", "prepare_sft", "load_frame", "load_splits", "TaskData",
    "infer_text_column", "infer_label_column",
    "resolve", "load_model", "hold",
    "Progress",
]


def __getattr__(name: str):
    # The classification/sft bundles live with the training base (torch loads with it).
    if name in ("ClassificationOptions", "SftOptions", "TaskOptions"):
        from . import training
        return getattr(training, name)
    raise AttributeError(f"llm_magics.plugin has no {name!r}; public: {', '.join(__all__)}")
