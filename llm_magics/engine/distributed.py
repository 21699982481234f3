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

Strategies (engine/parallel.py's `loop_for` picks the loop): `ddp` (a whole copy per rank, gradients
averaged here) and `fsdp` (`FSDPTrainLoop`: FSDP2's `fully_shard` on every transformer block, on a
classifier's head, then on the root; each rank holds 1/N of every weight, of its
gradient and of its optimizer state; FSDP reduce-scatters the gradients, so the
averaging above is skipped). Under FSDP every checkpoint is written whole, in the
one-process format (each tensor gathered first: engine/checkpoint.py), so `--resume`
works across strategies; when training ends the whole weights are gathered onto
rank 0 (`get_model_state_dict`, full state dict, CPU offload) and FSDP is taken off
its model, which is then the plain model a one-process run ends with: the method
scores it, saves it or its adapter, as ever. Limits: each rank loads the whole
model before sharding it (the method's loader), so FSDP saves the gradients' and
the optimizer's memory, and the weights' only once training starts; a method that
edits the model from whole gradients after each step (AdaLoRA) is refused.
DeepSpeed ZeRO-2/3: engine/deepspeed_loop.py.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .loop import TrainLoop


WRAP_FILE = "fsdp.json"   # in the run's launch folder: the classes FSDP wrapped


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


def broadcast_weights(model: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights (a fresh head is seeded anyway; this makes sure)."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, 0)


def mean_over_ranks(loss: torch.Tensor, tokens: int, rows: int) -> tuple[float, int]:
    """(the loss averaged over every rank's rows, the tokens summed): one all-reduce. A rank with no rows
    in this micro-batch passes rows 0."""
    stats = torch.tensor([float(loss.detach()) * rows, float(tokens), float(rows)], dtype=torch.float64)
    dist.all_reduce(stats)
    return float(stats[0] / max(stats[2], 1)), int(stats[1])


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
        broadcast_weights(model)
        self.wrap(model, device)   # before the optimizer is made: FSDP replaces the parameters
        super().__init__(model, task, config, progress, folder, device, **kwargs)
        self.stop_file = self.run_folder / "launch" / "STOP"

    def wrap(self, model, device) -> None:
        """What the strategy does to the model before training (DDP: nothing)."""

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
        return mean_over_ranks(loss, tokens if weight else 0, len(mine) if weight else 0)

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
        self.finish_weights()
        outcome.notes.append(f"trained on {self.world} processes ({self.strategy}): each took its slice of every "
                             f"batch of {self.config.batch_size}")
        if getattr(self, "wrap_note", None):
            outcome.notes.append(self.wrap_note)
        dist.barrier()
        if self.rank != 0:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise RankDone()
        return outcome

    def finish_weights(self) -> None:
        """After training, before the ranks part: rank 0's model must be whole (DDP: it is)."""



# ---- FSDP ---------------------------------------------------------------------------------------
def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks, FSDP's wrap unit: the classes transformers names as not to be
    split (`_no_split_modules`) that sit in a ModuleList (BertLayer, not BertEmbeddings); without
    such a name, the members of the longest ModuleList of modules with parameters."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    in_lists = [child for module in model.modules() if isinstance(module, torch.nn.ModuleList)
                for child in module if any(True for _ in child.parameters())]
    blocks = [m for m in in_lists if type(m).__name__ in names]
    if blocks:
        return blocks
    lists = [module for module in model.modules() if isinstance(module, torch.nn.ModuleList)
             and len(module) > 1 and all(any(True for _ in c.parameters()) for c in module)]
    return list(max(lists, key=len)) if lists else []


def shard(model: torch.nn.Module) -> list[torch.nn.Module]:
    """FSDP2 full shard in place: each transformer block a unit, a classifier's head a unit (the
    head-only task calls it alone), the rest with the root. The units sharded, root last."""
    from torch.distributed.fsdp import fully_shard
    units = transformer_blocks(model)
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Module) and any(True for _ in head.parameters()):
        units.append(head)
    # Every unit reshards after its forward, the root too (FSDP would keep the root, or the head when
    # the head-only task calls it alone, whole until backward): between steps every registered
    # parameter is then the shard the optimizer holds, as the checkpoints expect.
    for unit in units:
        fully_shard(unit, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return units + [model]


def gather_whole(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sharded model's full state dict, gathered onto rank 0's CPU (empty on the other ranks).
    Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()   # the root stays unsharded after an evaluation's forward
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unshard_in_place(model: torch.nn.Module, whole: dict[str, torch.Tensor], device: torch.device) -> None:
    """Take FSDP off `model` (every unit's class, hooks and state) and give it plain parameters
    holding `whole` (from `gather_whole`) on `device`: the module a one-process run trains.
    Tied weights stay tied (one new parameter per old one)."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.fsdp import FSDPModule, fully_shard
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    made: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for module in model.modules():
            for key, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in made:
                    found = [whole[n] for n in names.get(id(param), []) if n in whole]
                    if not found:
                        raise RuntimeError(f"FSDP: no gathered weight for {names.get(id(param))}")
                    made[id(param)] = torch.nn.Parameter(found[0].to(device), requires_grad=param.requires_grad)
                module._parameters[key] = made[id(param)]
    for module in list(model.modules()):
        if not isinstance(module, FSDPModule):
            continue
        state = fully_shard.state(module)
        handles = [getattr(state, "_pre_forward_hook_handle", None), getattr(state, "_post_forward_hook_handle", None)]
        for group in getattr(state, "_fsdp_param_groups", []):   # state-dict hooks that would re-shard the module
            handles += list(group._module_to_pre_save_state_dict_hook_handle.values())
            handles += list(group._module_to_pre_load_state_dict_hook_handle.values())
            handles += [getattr(p, "_post_load_hook_handle", None) for p in group.fsdp_params]
        for handle in {id(h): h for h in handles if h is not None}.values():
            handle.remove()
        module.__class__ = type(module).__mro__[FSDPModule._orig_cls_mro_index]
        for key in (STATE_KEY, REGISTRY_KEY):
            module.__dict__.pop(key, None)
        _module_state_mapping.pop(module, None)
    for module in model.modules():
        for flag in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
            module.__dict__.pop(flag, None)


class _WholeParams:
    """Stands for a sharded model while a checkpoint is loaded: its trainable parameters whole
    (plain tensors of their global shape), to be scattered into the shards afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.params = {name: torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype), requires_grad=True)
                       for name, p in model.named_parameters() if p.requires_grad}

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self):
        return iter(self.params.values())


class _StateDict(dict):
    def __missing__(self, key):
        self[key] = {}
        return self[key]


class WholeOptimizer:
    """An optimizer's stand-in in the one-process checkpoint's form: its groups' settings without their
    parameters, and a state that makes each parameter's entry as a resume reads it in."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.param_groups = [{k: v for k, v in g.items() if k != "params"} | {"params": []}
                             for g in optimizer.param_groups]
        self.state: dict = _StateDict()


class FSDPTrainLoop(DistributedTrainLoop):
    """`DistributedTrainLoop` with the model fully sharded (FSDP2): see the module docstring."""

    strategy = "fsdp"

    def __init__(self, model, task, config, progress, folder, device, **kwargs):
        if kwargs.get("before_zero_grad") is not None:
            from ..errors import UsageError
            raise UsageError("--strategy fsdp: this method changes the model from its whole gradients after every "
                             "step (AdaLoRA's rank budget), and under FSDP each worker holds a shard of them; use "
                             "--strategy ddp")
        super().__init__(model, task, config, progress, folder, device, **kwargs)

    def wrap(self, model, device) -> None:
        blocks = transformer_blocks(model)
        names = sorted({type(b).__name__ for b in blocks})   # before FSDP renames their classes
        self.units = shard(model)
        self.whole = False   # rank 0's model gathered and unwrapped
        self.wrap_classes = names
        parts = [f"{len(blocks)} × {', '.join(names)}"] if blocks else []
        if len(self.units) - len(blocks) > 1:
            parts.append("the head")
        self.wrap_note = "FSDP units: " + ", ".join(parts + ["the root (the rest)"])
        launch = self.run_folder / "launch"
        if self.rank == 0 and launch.is_dir():   # %llm export names the wrap class in accelerate.yaml
            (launch / WRAP_FILE).write_text(json.dumps({"wrap": names, "blocks": len(blocks)}))

    def _reduce_gradients(self) -> None:
        pass   # FSDP reduce-scattered them (averaged over ranks) in backward

    def save_checkpoint(self) -> None:
        """Rank 0 writes the checkpoint whole (engine/checkpoint.py gathers each shard); the others take
        part in the same gatherings, in the same order, and write nothing."""
        if self.rank == 0:
            TrainLoop.save_checkpoint(self)
            return
        from .checkpoint import whole_tensor
        for _, param in self.model.named_parameters():   # checkpoint.trainable_state's order
            if param.requires_grad:
                whole_tensor(param.detach())
        for state in self.optimizer.state.values():     # checkpoint._optimizer_tensors' order
            for value in state.values():
                if torch.is_tensor(value):
                    whole_tensor(value.detach())

    def resume(self, folder: Path) -> None:
        """Load the one-process format into whole stand-ins, then scatter them into the shards."""
        from torch.distributed.tensor import distribute_tensor
        model, optimizer = self.model, self.optimizer
        whole, whole_optimizer = _WholeParams(model), WholeOptimizer(optimizer)
        self.model, self.optimizer = whole, whole_optimizer
        try:
            super().resume(folder)
        finally:
            self.model, self.optimizer = model, optimizer
        by_name = dict(model.named_parameters())
        # AdamW keeps its step counter on the CPU unless fused or capturable (as engine/checkpoint.py loads it)
        steps_on_device = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
        with torch.no_grad():
            for name, value in whole.params.items():
                param = by_name[name]
                shard_of = lambda t: distribute_tensor(t.to(param.device, param.dtype), param.device_mesh,  # noqa: E731
                                                       param.placements)
                param.to_local().copy_(shard_of(value.data).to_local())
                saved = whole_optimizer.state.get(value)
                if saved:
                    optimizer.state[param] = {
                        k: (shard_of(v) if v.dim() > 0 else v.to(param.device) if steps_on_device else v)
                        if torch.is_tensor(v) else v for k, v in saved.items()}
        for group, saved in zip(optimizer.param_groups, whole_optimizer.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def _restore_best(self) -> None:
        self.finish_weights()
        if self.rank == 0:
            super()._restore_best()

    def finish_weights(self) -> None:
        """Gather the whole weights onto rank 0 and take FSDP off its model (every rank takes part
        in the gathering; once)."""
        if self.whole:
            return
        whole = gather_whole(self.model)
        self.whole = True
        if self.rank == 0:
            unshard_in_place(self.model, whole, self.device)
