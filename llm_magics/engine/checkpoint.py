"""Training checkpoints as safetensors + JSON: never pickle.

A checkpoint holds what resuming needs to end where an uninterrupted run
ends: the trainable weights, the optimizer's per-parameter state, the
scheduler's counters, the RNG states, and the loop's position (epoch, the
epoch's batch plan, how far into it). `torch.save` would pickle all of that;
here tensors go to safetensors and everything else to JSON.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WEIGHTS = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
WEIGHTS_STATE = "weights_state.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_weights(model: torch.nn.Module, folder: Path, extra: dict[str, Any] | None = None) -> Path:
    """The trainable weights; `extra` (JSON) is state that belongs with them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS
    tmp = path.with_suffix(".tmp")
    save_file(trainable_state(model), str(tmp))
    tmp.replace(path)
    if extra is not None:
        tmp = folder / (WEIGHTS_STATE + ".tmp")
        tmp.write_text(json.dumps(extra, default=_jsonable))
        tmp.replace(folder / WEIGHTS_STATE)
    return path


def load_weights(model: torch.nn.Module, folder: Path) -> dict[str, Any] | None:
    """Copy saved weights into the model; return the `extra` saved with them, if any."""
    state = load_file(str(folder / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint has weights the model lacks: {missing[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    extra = folder / WEIGHTS_STATE
    return json.loads(extra.read_text()) if extra.exists() else None


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{name}::{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{name}::{key}"] = value
    return tensors, scalars


def save(folder: Path, model, optimizer, scheduler, loop_state: dict[str, Any]) -> None:
    """Write a resumable checkpoint atomically (a crash mid-write keeps the previous one)."""
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(model, staging)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors, scalars = _optimizer_tensors(optimizer, names)
    tensors["__rng_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"__rng_cuda_{i}"] = state
    save_file(tensors, str(staging / OPTIMIZER))
    state = {"loop": loop_state, "optimizer_scalars": scalars,
             "optimizer_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
             "scheduler": scheduler.state_dict() if scheduler is not None else None}
    (staging / STATE).write_text(json.dumps(state, default=_jsonable))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def load(folder: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG; return the loop's saved position."""
    load_weights(model, folder)
    tensors = load_file(str(folder / OPTIMIZER))
    state = json.loads((folder / STATE).read_text())
    params = dict(model.named_parameters())
    on_device_steps = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    for key, value in list(tensors.items()):
        if key.startswith("__rng"):
            continue
        name, _, field = key.rpartition("::")
        param = params[name]
        # AdamW keeps its step counter on the CPU unless fused or capturable.
        keep_on_cpu = field == "step" and not on_device_steps
        optimizer.state[param][field] = value if keep_on_cpu else value.to(param.device)
    for key, value in state["optimizer_scalars"].items():
        name, _, field = key.rpartition("::")
        optimizer.state[params[name]][field] = value
    for group, saved in zip(optimizer.param_groups, state["optimizer_groups"]):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["__rng_cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("__rng_cuda_")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state["loop"]


def exists(folder: Path) -> bool:
    """A resumable checkpoint: weights, optimizer and loop state (`checkpoint-last`)."""
    return (folder / STATE).exists() and (folder / WEIGHTS).exists()


def has_weights(folder: Path) -> bool:
    """Weights alone, as `save_weights` writes them (`checkpoint-best`)."""
    return (folder / WEIGHTS).exists()


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
