"""Option bundles several methods share, declared once (like IPython's script magics).

A method's options dataclass inherits the bundles it needs:

    @dataclass
    class ProbeOptions(ModelOptions, DataOptions, RunOptions):
        layer: str = option("-1", ...)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import at_most, bounded, fraction, non_negative, option, positive, seed, when


# The one rule for names: a name becomes a file or folder name with suffixes added (.safetensors,
# .jsonl.tmp-…), and 255 bytes is the file system's cap on one; 100 leaves room for every suffix.
NAME_LIMIT = 100


def _too_long(text: str, what: str) -> str | None:
    if len(text.encode()) > NAME_LIMIT:
        return f"{what} is {len(text)} characters long: at most {NAME_LIMIT} (it names a file)"
    return None


def identifier(value) -> str | None:
    """A variable the Result is bound to (and, where it names a run, a file)."""
    if value is not None and not str(value).isidentifier():
        return f"{value!r} is not a valid Python variable name"
    return None if value is None else _too_long(str(value), "the name")


def plain_name(value) -> str | None:
    """An adapter's or a run's name: one folder name, never a path (PEFT refuses a '.', a file system a '/')."""
    if value is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", str(value)):
        return f"{value!r} is not a valid name: letters, digits, _ and - (no '/', '.' or spaces)"
    return _too_long(str(value), "the name")


def file_path(value) -> str | None:
    """A file or folder to write: the name it creates keeps to the name rule, every folder above it to the
    file system's 255 bytes."""
    if value is None:
        return None
    parts = Path(str(value)).parts
    if not parts:
        return "is empty: name a file or folder"
    if any(len(part.encode()) > 255 for part in parts[:-1]):
        return "has a folder name longer than the file system's 255 bytes"
    return _too_long(parts[-1], f"the file name {parts[-1][:20]}…")


STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed", "deepspeed-zero2")   # engine/parallel.py: the loop of each


def _node_rank(value) -> str | None:
    if value is not None and not (isinstance(value, int) and value >= 0):
        return f"is this machine's index among --nodes (0 … nodes-1), got {value!r}"
    return None


def _within_devices(value) -> str | None:
    """No more workers than this machine has devices: CUDA devices, or CPU cores without one."""
    problem = positive(value)
    if problem or value == 1:
        return problem
    from .engine.device import visible_devices
    count, what = visible_devices()
    return None if value <= count else f"{value} is more than the {count} {what} here: at most {count}"


within_devices = bounded(_within_devices, "at most the visible devices: CUDA devices, or CPU cores")


@dataclass
class LaunchOptions:
    """Past one device: `--devices N` above 1 (or `--nodes` above 1) sends the run to torchrun workers
    (`llm_magics.launch`); with the defaults nothing changes."""
    devices: int = option(1, "processes on this machine (one per GPU; CPU processes without one); above 1 the run "
                             "goes to torchrun workers and streams back here", check=within_devices)
    strategy: str = option("auto", "how the workers share the model: ddp (a copy each) or fsdp (sharded, a "
                                   "transformer block per unit); auto: ddp, or fsdp when training would not fit one "
                                   "GPU; deepspeed (ZeRO-3) and deepspeed-zero2 need DeepSpeed (the deepspeed extra)",
                           choices=STRATEGIES)
    nodes: int = option(1, "machines taking part (each runs the same cell with its own --node-rank)", check=positive)
    node_rank: int = option(0, "this machine's index among --nodes", check=_node_rank, applies=when("nodes", above=1))
    master_addr: str | None = option(None, "address of node 0 when --nodes is above 1", metavar="HOST",
                                     applies=when("nodes", above=1))
    # What needs the machine (strategy, DeepSpeed installed) is checked by launch.options.check_launch() when the
    # launcher starts, not at parse time.


@dataclass
class ComputeOptions:
    """Where and in what a model runs; composed with the option that names the model."""
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bf16 where the hardware does it natively, else fp32 (fp16 on MPS); "
                                "training autocasts to it on GPUs, on a CPU only when asked (bfloat16)",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "run the model repository's own code (only for authors you trust)")


@dataclass
class _ModelChoice:
    model: str | None = option(None, "an alias (minilm, smollm2), a local folder or a hub id "
                                     "(default: the configured default model)")


@dataclass
class ModelOptions(ComputeOptions, _ModelChoice):
    """The model (`--model`), and where and in what it runs."""


SEEDS_LIMIT = 100   # each seed is a whole run: a typo's --seeds 10000 is refused at parse time


@dataclass
class SeedOptions:
    """`--seeds N`: the run N times, with seeds --seed, --seed+1, …, and one aggregate Result (each metric's mean
    with its 95 % intervals, the per-seed runs linked). Composed into every options class that has a --seed;
    the runner alone acts on it (`runner.run_seeds`)."""
    seeds: int = option(1, "run N times (seeds --seed … --seed+N-1) and give the mean with 95 % intervals: "
                           "Student's t over seeds and a bootstrap over test rows", check=at_most(SEEDS_LIMIT),
                        metavar="N")


@dataclass
class DataOptions(SeedOptions):
    data: Any = option(None, "training data: a variable, a file (csv, tsv, jsonl, json, parquet) or a "
                             "dataset name[:split]; everything when no other split is given", metavar="DATA")
    validation: Any = option(None, "validation data (default: split off --data)", metavar="DATA")
    test: Any = option(None, "test data (default: split off --data)", metavar="DATA")
    text: str | None = option(None, "text column (default: inferred when unambiguous)", metavar="COLUMN")
    label: str | None = option(None, "label column (default: inferred when unambiguous)", metavar="COLUMN")
    seed: int = option(0, "seed for splits, sampling and initialisation (0 … 2**32-1)", check=seed)
    val_size: float = option(0.1, "share of --data held out for validation when --validation is not given",
                             check=fraction)
    test_size: float = option(0.2, "share of --data held out for testing when --test is not given",
                              check=fraction)


@dataclass
class RunOptions:
    out: str | None = option(None, "also bind the Result to this variable; the magic then returns nothing",
                             metavar="NAME", check=identifier)


def warmup_share(value) -> str | None:
    if value is not None and not 0 <= value < 1:
        return f"is a share of the training steps: at least 0 and below 1, got {value}"
    return None


@dataclass
class BackgroundOptions:
    bg: bool = option(False, "run in the background and return a handle at once (its widget has a Stop button)")


@dataclass
class OptimizerOptions:
    """The optimizer and its schedule: what our loop and TRL's trainers both read."""
    lr: float | None = option(None, "peak learning rate (default: chosen by what trains, see the method's help)",
                              check=positive)
    grad_accum: int = option(1, "batches per optimizer step", check=positive)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this (0: no clipping)", check=non_negative)
    weight_decay: float = option(0.01, "AdamW weight decay (not on biases and norms)", check=non_negative)
    warmup: float = option(0.06, "share of the steps spent warming the learning rate up", check=warmup_share)
    scheduler: str = option("linear", "learning-rate decay after warmup", choices=("linear", "cosine", "constant"))


@dataclass
class EvaluationOptions:
    """Held-out evaluation during training, and early stopping on it (the engine's loop)."""
    eval_every: int | None = option(None, "evaluate every N optimizer steps (default: every epoch)",
                                    check=positive)
    patience: int | None = option(None, "early stopping: evaluations without improvement before stopping",
                                  check=positive)


def run_to_resume(value) -> str | None:
    """A run id (never a path: the checkpoint is looked up in the home's runs folder), or `last`."""
    if value is None or value == "last" or plain_name(value) is None:
        return None
    return f"{str(value)[:40]!r} is not a run id or 'last': name a run as %llm runs lists it, never a folder"


@dataclass
class ResumeOptions:
    resume: str | None = option(None, "continue a stopped or crashed run from its last checkpoint: "
                                      "its run id, or 'last'", metavar="RUN_ID", check=run_to_resume)


@dataclass
class BatchOptions:
    """How much the run sees: passes, rows per batch, tokens per row."""
    epochs: int = option(3, "passes over the training data", check=positive)
    batch_size: int = option(32, "rows per batch (halved on out-of-memory, with accumulation doubled)",
                             check=positive)
    max_length: int = option(256, "tokens per row (longer rows are truncated)", check=positive)


@dataclass
class TrainingOptions(LaunchOptions, BackgroundOptions, ResumeOptions, EvaluationOptions, OptimizerOptions,
                      BatchOptions):
    """Everything the training base's loop reads, composed from the bundles above."""
