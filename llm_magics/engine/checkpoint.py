"""Training checkpoints as safetensors + JSON: never pickle; checked on every load.

A checkpoint holds what resuming needs to end where an uninterrupted run
ends: the trainable weights, the optimizer's per-parameter state, the
scheduler's counters, the run's RNG state, and the loop's position (epoch, the
epoch's batch plan, how far into it). `torch.save` would pickle all of that;
here tensors go to safetensors and everything else to JSON.

Every checkpoint folder is written whole (`safe_io.atomic_folder`: a crash
keeps the previous one) and carries `llm_magics_checksums.json`, the size and
SHA-256 of each file. Every load checks it, then the tensors' names and shapes
against the model: a damaged checkpoint (zeroed weights under a valid header, a
truncated optimizer file, an edited `state.json`) is refused with one
`UsageError` line naming the file and what to do — never resumed.

A resumable checkpoint (`checkpoint-last`) is continued once: when the run that
resumed it ends, it is marked `continued.json` (by that run's id) and its
optimizer state, twice the size of the weights, is removed; resuming it again is
refused, naming the run to resume instead.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UsageError
from ..safe_io import atomic_folder, verify_manifest, write_manifest

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
WEIGHTS_STATE = "weights_state.json"
CONTINUED = "continued.json"
RUN_OPTIONS = "run_options.json"     # in the run's folder, beside its checkpoints

RESUME_TODO = "this checkpoint cannot be resumed: start the run again without --resume"
LOOP_KEYS = ("epoch", "position", "step", "plan", "history", "best", "since_best", "tokens", "rows", "seconds",
             "batch_size", "grad_accum")


def whole_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor as one process holds it: an FSDP shard (a DTensor) is gathered from every rank first
    (every rank must be saving: engine/distributed.py)."""
    full = getattr(tensor, "full_tensor", None)
    return full() if full is not None else tensor


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    gathered = getattr(model, "whole_trainable_state", None)   # ZeRO-3's partitions (engine/deepspeed_loop.py)
    if gathered is not None:
        return gathered()
    return {name: whole_tensor(p.detach()).to("cpu").contiguous() for name, p in model.named_parameters()
            if p.requires_grad}


# ---- writing ---------------------------------------------------------------------------------
def _write_weights(model: torch.nn.Module, folder: Path, extra: dict[str, Any] | None) -> None:
    save_file(trainable_state(model), str(folder / WEIGHTS))
    if extra is not None:
        (folder / WEIGHTS_STATE).write_text(json.dumps(extra, default=_jsonable))


def save_weights(model: torch.nn.Module, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """The trainable weights (`checkpoint-best`), written whole with their checksums; `extra`
    (JSON) is state that belongs with them."""
    with atomic_folder(folder) as staging:
        _write_weights(model, staging, extra)
        write_manifest(staging)
    return Path(folder) / WEIGHTS


def save(folder: Path, model, optimizer, scheduler, loop_state: dict[str, Any], rng=None) -> None:
    """Write a resumable checkpoint whole (a crash mid-write keeps the previous one), checksummed.

    `rng`: the run's generator (`engine.rng.RunRng`); without one, the global generator's state."""
    with atomic_folder(folder) as staging:
        _write_weights(model, staging, None)
        names = {id(p): n for n, p in model.named_parameters()}
        tensors, scalars = _optimizer_tensors(optimizer, names)
        tensors.update(rng.state() if rng is not None else _global_rng())
        save_file(tensors, str(staging / OPTIMIZER))
        state = {"loop": loop_state, "optimizer_scalars": scalars,
                 "optimizer_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
                 "scheduler": scheduler.state_dict() if scheduler is not None else None}
        (staging / STATE).write_text(json.dumps(state, default=_jsonable))
        write_manifest(staging)


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}::{key}"] = whole_tensor(value.detach()).to("cpu").contiguous()
            else:
                scalars[f"{name}::{key}"] = value
    return tensors, scalars


def _global_rng() -> dict[str, torch.Tensor]:
    tensors = {"__rng_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"__rng_cuda_{i}"] = state
    return tensors


# ---- checking --------------------------------------------------------------------------------
def check(folder: Path, todo: str) -> None:
    """Every file of the checkpoint is as it was written (sizes, SHA-256), else one UsageError line
    naming the file and `todo` (what to do)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"checkpoint {folder} is missing; {todo}")
    problems = verify_manifest(folder, required=True)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"damaged checkpoint: {folder}{os.sep}{problems[0]}{more}; {todo}")


def _read_tensors(path: Path, todo: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # a header that parses but does not describe the bytes, and the like
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UsageError(f"damaged checkpoint: {path} cannot be read ({reason}); {todo}") from None


def _read_json(path: Path, todo: str):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"damaged checkpoint: {path} is missing; {todo}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"damaged checkpoint: {path} is not valid JSON ({exc}); {todo}") from None


def _check_weights(state: dict[str, torch.Tensor], model: torch.nn.Module, path: Path, todo: str) -> dict:
    params = dict(model.named_parameters())
    foreign = [name for name in state if name not in params]
    if foreign:
        raise UsageError(f"checkpoint {path} holds weights this model lacks ({', '.join(foreign[:3])}): it belongs "
                         f"to another model; {todo}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UsageError(f"checkpoint {path}: {name} has shape {tuple(tensor.shape)} where the model has "
                             f"{tuple(params[name].shape)}: it belongs to another model; {todo}")
    return params


def _copy_in(state: dict[str, torch.Tensor], params: dict) -> None:
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


# ---- loading ---------------------------------------------------------------------------------
def load_weights(model: torch.nn.Module, folder: Path, todo: str = "train the run again") -> dict[str, Any] | None:
    """Copy saved weights into the model, checked first; return the `extra` saved with them, if any."""
    folder = Path(folder)
    check(folder, todo)
    state = _read_tensors(folder / WEIGHTS, todo)
    params = _check_weights(state, model, folder / WEIGHTS, todo)
    extra = _read_json(folder / WEIGHTS_STATE, todo) if (folder / WEIGHTS_STATE).exists() else None
    _copy_in(state, params)
    return extra


# Checksums catch damage, not an edit followed by a rewritten checksum list; these cheap checks catch the
# nonsense such an edit makes (docs/trust.md).
def _refuse_zeroed(weights: dict[str, torch.Tensor], params: dict, path: Path, todo: str) -> None:
    if weights and not any(t.any() for t in weights.values()) and any(params[n].detach().any() for n in weights):
        raise UsageError(f"checkpoint {path}: every trainable weight is zero where the model's are not: no "
                         f"training run writes that; {todo}")


def check_position(loop: dict[str, Any], folder: Path, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
    """The saved step and epoch must lie in the run's plan: 0 <= step <= total steps, the epoch the step's."""
    step, epoch = loop.get("step"), loop.get("epoch")
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (step, epoch))
    if not (whole and 0 <= step <= total_steps and 0 <= epoch <= epochs
            and epoch * steps_per_epoch <= step <= (epoch + 1) * steps_per_epoch):
        raise UsageError(f"checkpoint {Path(folder) / STATE}: step {step!r} of epoch {epoch!r} is outside this "
                         f"run's plan ({total_steps} steps, {epochs} epochs of {steps_per_epoch}); {RESUME_TODO}")


def check_first_loss(loss: float, folder: Path) -> None:
    """The first batch after a resume: weights no training wrote (NaN, or huge) show as a loss that is not finite."""
    if not math.isfinite(loss):
        raise UsageError(f"checkpoint {Path(folder) / WEIGHTS}: the loss on the first batch after resuming is "
                         f"{loss}: these weights are not what training wrote; {RESUME_TODO}")


def load(folder: Path, model, optimizer, scheduler, rng=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG (into `rng`, a `RunRng`, or else the global
    generator); return the loop's saved position. Everything is checked before anything changes."""
    folder, todo = Path(folder), RESUME_TODO
    refuse_continued(folder, "--resume")
    check(folder, todo)
    weights = _read_tensors(folder / WEIGHTS, todo)
    params = _check_weights(weights, model, folder / WEIGHTS, todo)
    _refuse_zeroed(weights, params, folder / WEIGHTS, todo)
    tensors = _read_tensors(folder / OPTIMIZER, todo)
    state = _read_json(folder / STATE, todo)
    bad = f"damaged checkpoint: {folder / STATE} is not a checkpoint's state"
    if not (isinstance(state, dict) and isinstance(state.get("loop"), dict)
            and isinstance(state.get("optimizer_scalars"), dict) and isinstance(state.get("optimizer_groups"), list)):
        raise UsageError(f"{bad}; {todo}")
    missing = [k for k in LOOP_KEYS if k not in state["loop"]]
    if missing:
        raise UsageError(f"{bad} (no {', '.join(missing[:3])}); {todo}")
    if len(state["optimizer_groups"]) != len(optimizer.param_groups):
        raise UsageError(f"checkpoint {folder / STATE}: {len(state['optimizer_groups'])} optimizer groups where this "
                         f"run has {len(optimizer.param_groups)}: it belongs to another run; {todo}")
    if "__rng_cpu" not in tensors:
        raise UsageError(f"damaged checkpoint: {folder / OPTIMIZER} has no RNG state; {todo}")
    moments = {}
    for key, value in tensors.items():
        if key.startswith("__rng"):
            continue
        name, _, field = key.rpartition("::")
        if name not in params:
            raise UsageError(f"checkpoint {folder / OPTIMIZER} has optimizer state for {name!r}, which this model "
                             f"lacks: it belongs to another model; {todo}")
        if field != "step" and tuple(value.shape) != tuple(params[name].shape):
            raise UsageError(f"checkpoint {folder / OPTIMIZER}: {key} has shape {tuple(value.shape)} where the "
                             f"weight has {tuple(params[name].shape)}; {todo}")
        moments[key] = (params[name], field, value)
    for key in state["optimizer_scalars"]:
        if key.rpartition("::")[0] not in params:
            raise UsageError(f"checkpoint {folder / STATE} has optimizer state for weights this model lacks; {todo}")

    _copy_in(weights, params)
    on_device_steps = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    for param, field, value in moments.values():
        # AdamW keeps its step counter on the CPU unless fused or capturable.
        keep_on_cpu = field == "step" and not on_device_steps
        optimizer.state[param][field] = value if keep_on_cpu else value.to(param.device)
    for key, value in state["optimizer_scalars"].items():
        name, _, field = key.rpartition("::")
        optimizer.state[params[name]][field] = value
    for group, saved in zip(optimizer.param_groups, state["optimizer_groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if rng is not None:
        rng.set_state(tensors)
    else:
        torch.set_rng_state(tensors["__rng_cpu"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("__rng_cuda_")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    return state["loop"]


# ---- what a folder holds -----------------------------------------------------------------------
def exists(folder: Path) -> bool:
    """A resumable checkpoint: weights, optimizer and loop state (`checkpoint-last`), not yet continued."""
    folder = Path(folder)
    return all((folder / name).exists() for name in (STATE, WEIGHTS, OPTIMIZER)) and not (folder / CONTINUED).exists()


def has_weights(folder: Path) -> bool:
    """Weights alone, as `save_weights` writes them (`checkpoint-best`)."""
    return (Path(folder) / WEIGHTS).exists()


# ---- resuming once -----------------------------------------------------------------------------
def continued_by(folder: Path) -> str | None:
    """The id of the run that continued this checkpoint, if one did."""
    path = Path(folder) / CONTINUED
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another run"


def refuse_continued(folder: Path, flag: str = "--resume") -> None:
    by = continued_by(folder)
    if by is not None:
        run = Path(folder).parent.name
        raise UsageError(f"{flag}: run {run} was already continued by run {by} (a checkpoint is resumed once); "
                         f"use {by}'s result, or --resume {by} if it was stopped too")


def mark_continued(folder: Path, run_id: str) -> None:
    """After the run `run_id` resumed `folder` and ended: mark it, drop its optimizer state (the
    weights stay), and record the files that remain."""
    folder = Path(folder)
    scratch = folder / f".{CONTINUED}.tmp"
    scratch.write_text(json.dumps({"run_id": run_id}))
    os.replace(scratch, folder / CONTINUED)
    (folder / OPTIMIZER).unlink(missing_ok=True)
    write_manifest(folder)


def resumable(folder: Path, flag: str = "--resume") -> Path:
    """The checkpoint `flag` names, checked whole before any work starts (not continued, every file
    as written, the run's options readable): else one UsageError line."""
    folder = Path(folder)
    refuse_continued(folder, flag)
    check(folder, RESUME_TODO)
    run_options(folder.parent, flag)
    return folder


def run_options(run_dir: Path, flag: str = "--resume") -> dict[str, Any]:
    """The options and data fingerprint a run recorded when it started (`run_options.json`)."""
    path = Path(run_dir) / RUN_OPTIONS
    todo = "its options cannot be checked; start the run again without --resume"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{flag}: {path} is missing, so {todo}") from None
    except (OSError, ValueError):
        raise UsageError(f"{flag}: {path} is not valid JSON (damaged), so {todo}") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("options"), dict)
            and isinstance(saved.get("data_fingerprint"), str)):
        raise UsageError(f"{flag}: {path} is not a run's options (damaged), so {todo}")
    return saved


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if torch.is_tensor(value):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")
