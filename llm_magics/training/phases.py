"""Weights handed from one phase to the next (`TrainingMethod.phases`): each finished phase writes what it
trained to the run's `phases/` folder, and the next phase's model starts from every earlier phase's weights.
A run resumed in a later phase copies the earlier phases' weights from the run it continues."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..engine import checkpoint
from ..errors import UsageError
from .options import Phase

FOLDER = "phases"


def phase_file(run_dir: Path, index: int, phase: Phase) -> Path:
    return Path(run_dir) / FOLDER / f"{index}-{phase.name}.safetensors"


def save_phase_weights(model: torch.nn.Module, run_dir: Path, index: int, phase: Phase) -> None:
    path = phase_file(run_dir, index, phase)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint.trainable_state(model), str(path))


def carry_weights(model: torch.nn.Module, run_dir: Path, phases: list[Phase], index: int) -> list[Path]:
    """Load what phases 0..index-1 trained into `model` (matched by parameter name), in their order; the files."""
    files = [phase_file(run_dir, earlier, phases[earlier]) for earlier in range(index)]
    for path in files:
        load_phase_weights(model, path)
    return files


def load_phase_weights(model: torch.nn.Module, path: Path) -> None:
    params = dict(model.named_parameters())
    state = load_file(str(path))
    missing = [name for name in state if name not in params]
    if missing:   # a method whose phases build differently named models cannot chain them
        raise RuntimeError(f"{path.name} holds {missing[0]!r}, which this phase's model does not have")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def check_phases(phases: list[Phase]) -> None:
    """The head-only fast path reads the session's shared, untrained base: only a first phase can take it."""
    late = [p.name for p in phases[1:] if p.head_only]
    if late:
        raise TypeError(f"phase {late[0]!r}: head_only is for the first phase only (its features come from the "
                        "untrained base); a later head-only phase trains through the base: select_trainable")


def copy_earlier_phases(resumed_run_dir: Path, run_dir: Path) -> None:
    """A run resumed in a later phase keeps the earlier phases' weights, so it can be resumed in turn."""
    source = Path(resumed_run_dir) / FOLDER
    if not source.is_dir():
        raise UsageError(f"--resume: {source} is missing, so the earlier phases' weights are gone; start the run "
                         "again without --resume")
    shutil.copytree(source, Path(run_dir) / FOLDER, dirs_exist_ok=True)
