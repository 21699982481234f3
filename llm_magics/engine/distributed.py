"""Training across processes: the engine's `TrainLoop`, data-parallel.

Each worker (started by `llm_magics.launch`) runs the same method with a
`DistributedTrainLoop`. Every rank builds the same global batch plan (same seed,
same batch size as a one-process run) and takes its slice of every batch
(`batch[rank::world]`); gradients are averaged across ranks before each optimizer
step, weighted so the step equals the one-process step on the whole batch. Train
loss and token counts are reduced across ranks; every rank evaluates the same
weights (so each agrees on the best checkpoint and on early stopping).
Checkpoints go to the run's folder from rank 0 only; the other ranks keep their
copy of the best weights in a scratch folder they remove when they end. A stop
(the Stop button, an interrupt) is agreed on by all ranks at the optimizer step,
so every worker stops at the same step boundary.

Why gradients are reduced here rather than by wrapping the model in
`torch.nn.parallel.DistributedDataParallel`: the engine's tasks do not always
call the model's `forward` (the head-only task calls `model.head` on cached
features), and DDP's reducer is armed by `forward`. One all-reduce of the flat
gradients per optimizer step computes what DDP computes (it is also what DDP does
with `no_sync` under gradient accumulation), for any task.

Strategies: `ddp` (a whole copy per rank, gradients averaged). FSDP and DeepSpeed
are refused by the launcher until they are proven here (see launch/__init__.py).
"""
from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .training import TrainLoop


class RankDone(Exception):
    """Raised on ranks other than 0 when training ends: only rank 0 builds the Result."""


def init_process_group(timeout_s: float = 300.0) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); gloo on CPU, NCCL on CUDA. `timeout_s` bounds
    every collective, so a peer that died never leaves the others waiting for ever."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), device


def rank_slice(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's rows of a global batch (strided, so sizes differ by at most one)."""
    return np.asarray(indices)[rank::world]


class DistributedTrainLoop(TrainLoop):
    """`TrainLoop` on one rank of a data-parallel group (see the module docstring)."""

    strategy = "ddp"

    def __init__(self, model, task, config, progress, folder, device, **kwargs):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.run_folder = Path(folder)
        if self.rank != 0:   # the others' writes go to a scratch folder, removed when they end
            folder = Path(folder) / f".rank{self.rank}"
        super().__init__(model, task, config, progress, folder, device, **kwargs)
        self._broadcast_weights()
        self.stop_file = self.run_folder / "launch" / "STOP"

    def _broadcast_weights(self) -> None:
        """Every rank starts from rank 0's weights (a fresh head is seeded anyway; this makes sure)."""
        with torch.no_grad():
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                dist.broadcast(tensor.data, 0)

    # -- the slice of every batch -----------------------------------------------------
    def _forward_backward(self, indices: np.ndarray) -> tuple[float, int]:
        full = len(indices)
        mine = rank_slice(indices, self.rank, self.world)
        weight = len(mine) * self.world / full   # the average over ranks is then the whole batch's mean
        if len(mine) == 0:   # a batch smaller than the group: take part with a row that counts zero
            mine, weight = np.asarray(indices)[:1], 0.0
        batch = self.task.batch(mine, self.device)
        with self.rng.active():
            with torch.autocast(self.device.type, dtype=self.config.autocast,
                                enabled=self.config.autocast is not None):
                loss, tokens = self.task.loss(self.model, batch)
            scaled = loss * weight / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        rows = len(mine) if weight else 0
        stats = torch.tensor([float(loss.detach()) * rows, float(tokens if weight else 0), float(rows)],
                             dtype=torch.float64)
        dist.all_reduce(stats)
        return float(stats[0] / max(stats[2], 1)), int(stats[1])

    def _optimizer_step(self) -> None:
        self._reduce_gradients()
        self._agree_on_stop()
        super()._optimizer_step()

    def _reduce_gradients(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _agree_on_stop(self) -> None:
        asked = getattr(self.progress, "stop_requested", None)
        local = bool(asked is not None and asked.is_set()) or (self.rank == 0 and self.stop_file.exists())
        flag = torch.tensor([1 if local else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag):
            agree = getattr(self.progress, "agree_stop", None)
            if agree is not None:
                agree()
            else:
                self.progress.stop_requested.set()

    # -- rank 0 keeps the run's checkpoints --------------------------------------------
    def save_checkpoint(self) -> None:
        if self.rank == 0:
            super().save_checkpoint()

    def resume(self, folder: Path) -> None:
        super().resume(folder)
        if self.rank != 0:
            self.resumed_from = None   # rank 0 marks the checkpoint continued, once

    def run(self):
        outcome = super().run()
        outcome.notes.append(f"trained on {self.world} processes ({self.strategy}): each took its slice of every "
                             f"batch of {self.config.batch_size}")
        dist.barrier()
        if self.rank != 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise RankDone()
        return outcome
