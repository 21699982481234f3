"""`--strategy deepspeed` (ZeRO-3) and `deepspeed-zero2`: the engine's loop over a DeepSpeed engine.

Each launched worker (torchrun, `llm_magics.launch`) runs the same `TrainLoop` as under DDP and FSDP
(`DistributedTrainLoop`: the same global batch plan, each rank its slice of every batch, rank 0 keeps
the run's checkpoints, a stop agreed at the optimizer step). Here `deepspeed.initialize` is called
directly inside that loop, on the process group torchrun set up, rather than the script being
started by `accelerate launch`: the loop stays ours (its events, checkpoints, stop and results), and
the `accelerate.yaml` that `%llm export` writes (jobs/accelerate.py: `deepspeed_config`, the same
ZeRO stage, accumulation and clipping) starts the exported job the same way.

What DeepSpeed does: ZeRO stage 2 partitions the gradients and AdamW's moments over the ranks (each
rank keeps the whole weights); stage 3 partitions the weights too (every block's weights are gathered
for its forward and backward, then freed). The optimizer is the engine's own AdamW (torch's, its
parameter groups and learning-rate schedule as in a one-process run) wrapped by ZeRO; DeepSpeed
averages the gradients over ranks and clips them (`gradient_clipping`); no compiled DeepSpeed op is
used (its shared-memory all-reduce kernel, which it would build with a C++ compiler on first use on a
CPU, is turned off: gloo does the collectives).

Gradient accumulation: the loop marks the last micro-batch of each window as DeepSpeed's accumulation
boundary and scales the loss itself (`scale_wrt_gas=False`), so a window shortened by the end of an
epoch or by an out-of-memory back-off is handled as in the other loops. The task calls the model (or
its head alone) directly, not through the engine's `forward`, so the loop does what that `forward`
does first (`clear_backward_seen_flag`): without it ZeRO-3 overwrites the accumulated gradient with
each micro-batch's (measured: a 2-micro-batch window trained on the last one only).

Checkpoints and weights: every checkpoint is written whole, in the one-process format, by rank 0
(the weights and AdamW's moments gathered from every rank's partition with DeepSpeed's
`safe_get_full_*` calls, which every rank makes), so `--resume` works across strategies; the best
weights (`checkpoint-best`) likewise. When training ends the whole weights are gathered onto rank 0,
DeepSpeed is taken off its model (hooks removed, plain parameters holding the gathered values), and
the method scores it, saves it or its LoRA adapter, as after a one-process run. Limits: each rank
loads the whole model before DeepSpeed partitions it (no `zero.Init`); fp16 with a loss scaler and a
method that edits the model from whole gradients after each step (AdaLoRA) are refused.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UsageError
from .distributed import DistributedTrainLoop, WholeOptimizer, mean_over_ranks
from .loop import TrainLoop

ZERO_STAGE = {"deepspeed": 3, "deepspeed-zero2": 2}
EXTRA = "pip install 'llm-magics[deepspeed]'"


def available() -> bool:
    """Whether DeepSpeed is installed (found, not imported: importing it costs seconds and logs)."""
    return importlib.util.find_spec("deepspeed") is not None


def zero_config(stage: int, grad_accum: int, max_grad_norm: float | None, micro_batch: int) -> dict:
    """The DeepSpeed config the loop initialises its engine with. Gradient accumulation is the loop's
    (it marks each window's boundary), so DeepSpeed's own is 1; its batch sizes only label its logs."""
    return {
        "train_micro_batch_size_per_gpu": max(int(micro_batch), 1),
        "gradient_accumulation_steps": 1,
        "gradient_clipping": float(max_grad_norm) if max_grad_norm else 0.0,
        "zero_optimization": {"stage": int(stage), "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as exc:
        raise UsageError(f"--strategy deepspeed needs DeepSpeed on every worker ({EXTRA}): {exc}") from None
    # Its shared-memory all-reduce for CPUs is a C++ op it compiles on first use (a compiler, and ~40 s
    # measured); gloo does the same collectives. Turned off before the first communicator is made, without
    # asking `deepspeed.ops.__compatible_ops__` (that probes every op with the compiler).
    import importlib
    try:
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    except (ImportError, AttributeError):   # another layout: nothing to turn off
        pass
    return deepspeed


def _shape(param) -> torch.Size:
    """A weight's shape as one process holds it (ZeRO-3 leaves an empty tensor and keeps the shape aside)."""
    return param.ds_shape if hasattr(param, "ds_shape") else param.shape


class _WholeParams:
    """Stands for the partitioned model while a checkpoint is written or read: its trainable weights
    whole (plain tensors of their global shape)."""

    def __init__(self, named):
        self.params = {name: torch.nn.Parameter(torch.zeros(_shape(p), dtype=torch.float32), requires_grad=True)
                       for name, p in named}

    def named_parameters(self):
        return iter(self.params.items())

    def parameters(self):
        return iter(self.params.values())


class DeepSpeedTrainLoop(DistributedTrainLoop):
    """`DistributedTrainLoop` over a DeepSpeed ZeRO engine (stage 3; `DeepSpeedZero2TrainLoop`: 2)."""

    strategy = "deepspeed"
    stage = 3

    def __init__(self, model, task, config, progress, folder, device, **kwargs):
        name = f"--strategy {self.strategy}"
        if kwargs.get("before_zero_grad") is not None:
            raise UsageError(f"{name}: this method changes the model from its whole gradients after every step "
                             f"(AdaLoRA's rank budget), and under ZeRO each worker holds a partition of them; use "
                             f"--strategy ddp")
        if config.autocast == torch.float16:
            raise UsageError(f"{name}: fp16 with a loss scaler is not driven under DeepSpeed; use --dtype bfloat16 "
                             f"or float32, or --strategy fsdp")
        deepspeed = _import_deepspeed()
        super().__init__(model, task, config, progress, folder, device, **kwargs)
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
        self.ds_config = zero_config(self.stage, config.grad_accum, config.max_grad_norm,
                                     config.batch_size // self.world)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = len(self.optimizer.param_groups)
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=self.optimizer, config=self.ds_config,
                                                    model_parameters=params, dist_init_required=False)
        if len(self.optimizer.param_groups) != groups:   # the schedule steps these groups
            raise RuntimeError(f"DeepSpeed changed the optimizer's groups ({groups} -> "
                               f"{len(self.optimizer.param_groups)})")
        self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self._micro = 0          # micro-batches since the last optimizer step
        self.whole = False       # rank 0's model gathered and DeepSpeed taken off
        self.wrap_note = (f"DeepSpeed ZeRO stage {self.stage}: "
                          + ("weights, gradients and AdamW's moments" if self.stage == 3
                             else "gradients and AdamW's moments") + f" partitioned over {self.world} processes")

    # -- training -------------------------------------------------------------------------
    def _forward_backward(self, indices):
        import numpy as np
        from .distributed import rank_slice
        s = self.state
        full = len(indices)
        mine = rank_slice(indices, self.rank, self.world)
        weight = len(mine) * self.world / full   # DeepSpeed averages over ranks: the whole batch's mean
        if len(mine) == 0:
            mine, weight = np.asarray(indices)[:1], 0.0
        boundary = self._micro + 1 >= self.grad_accum or s["position"] + 1 >= len(s["plan"])
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.optimizer.clear_backward_seen_flag()   # what the engine's forward does first
        batch = self.task.batch(mine, self.device)
        with self.rng.active():
            with torch.autocast(self.device.type, dtype=self.config.autocast,
                                enabled=self.config.autocast is not None):
                loss, tokens = self.task.loss(self.model, batch)
            self.engine.backward(loss * weight / self.grad_accum, scale_wrt_gas=False)
        self._micro += 1
        return mean_over_ranks(loss, tokens if weight else 0, len(mine) if weight else 0)

    def _optimizer_step(self) -> None:
        self._agree_on_stop()
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()        # clips, steps AdamW on this rank's partition, gathers, zeroes the gradients
        self.scheduler.step()
        self.state["step"] += 1
        self._micro = 0

    def _back_off(self) -> None:
        self.engine.zero_grad()
        self._micro = 0
        super()._back_off()

    # -- whole tensors from the partitions (every rank calls these, in the same order) ------
    def whole_trainable(self) -> dict[str, torch.Tensor]:
        """The trainable weights whole (AdamW's fp32 copy), on the CPU of every rank."""
        from deepspeed.utils import safe_get_full_fp32_param
        return {name: safe_get_full_fp32_param(p).detach().reshape(_shape(p)).to("cpu").clone()
                for name, p in self._named}

    def _link_moments(self) -> None:
        """ZeRO-1/2 link each weight to its slice of AdamW's state once, after stepping the first of the
        optimizer's groups, when the other groups have no state yet (DeepSpeed 0.19: with two groups —
        ours: decay and no decay — the second's weights were left unlinked, 'exp_avg not found'). Linked
        again here, after every group has its state."""
        zero = self.engine.optimizer
        if hasattr(zero, "_hp_optimizer_states_linked") and hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()

    def _start_moments(self) -> None:
        """AdamW's state, zero, for each of ZeRO's flat partitions that has none yet (before the first
        step), so a resumed checkpoint's moments can be set into it (AdamW keeps state it finds)."""
        zero = self.engine.optimizer
        flats = getattr(zero, "fp32_partitioned_groups_flat", None) or getattr(zero, "single_partition_of_fp32_groups")
        for flat in flats:
            if not self.optimizer.state.get(flat):
                self.optimizer.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                              "exp_avg_sq": torch.zeros_like(flat)}
        self._link_moments()

    def _whole_moments(self) -> dict[str, dict[str, torch.Tensor]]:
        from deepspeed.utils import safe_get_full_optimizer_state
        states = [s for s in self.optimizer.state.values() if s]
        if not states:   # before the first step AdamW holds nothing, as in one process
            return {}
        self._link_moments()
        step = next((s["step"] for s in states if "step" in s), None)
        out = {}
        for name, p in self._named:
            moments = {}
            for key in ("exp_avg", "exp_avg_sq"):
                value = safe_get_full_optimizer_state(p, key)
                if value is not None:
                    moments[key] = value.detach().reshape(_shape(p)).to("cpu").clone()
            if moments and step is not None:
                moments["step"] = step.detach().to("cpu").clone() if torch.is_tensor(step) else torch.tensor(
                    float(step))
            out[name] = moments
        return out

    def _stand_ins(self):
        """A whole stand-in for the model and the optimizer, in the one-process checkpoint's form."""
        model = _WholeParams(self._named)
        for name, value in self.whole_trainable().items():
            model.params[name].data = value
        optimizer = WholeOptimizer(self.optimizer)
        for name, moments in self._whole_moments().items():
            if moments:
                optimizer.state[model.params[name]] = moments
        return model, optimizer

    # -- checkpoints ------------------------------------------------------------------------
    def _evaluate(self, initial: bool = False) -> bool:
        # checkpoint.save_weights reads the trainable weights from the model: under ZeRO-3 each rank holds a
        # partition of them, so they are gathered (by every rank) for that one read.
        if self.stage == 3:
            self.model.whole_trainable_state = self.whole_trainable
        try:
            return super()._evaluate(initial)
        finally:
            self.model.__dict__.pop("whole_trainable_state", None)

    def save_checkpoint(self) -> None:
        from . import checkpoint
        model, optimizer = self._stand_ins()   # every rank gathers
        if self.rank == 0:
            checkpoint.save(self.last_dir, model, optimizer, self.scheduler, self.state, rng=self.rng)

    def resume(self, folder: Path) -> None:
        """Load the one-process format into whole stand-ins, then set every rank's partitions from them."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
        import deepspeed
        engine_optimizer = self.optimizer
        whole, whole_optimizer = _WholeParams(self._named), WholeOptimizer(self.optimizer)
        model, self.model, self.optimizer = self.model, whole, whole_optimizer
        try:
            TrainLoop.resume(self, folder)
        finally:
            self.model, self.optimizer = model, engine_optimizer
        if self.rank != 0:
            self.resumed_from = None
        step = None
        if any(whole_optimizer.state.get(p) for p in whole.params.values()):
            self._start_moments()
        with torch.no_grad():
            for name, param in self._named:
                value = whole.params[name].data
                safe_set_full_fp32_param(param, value.to(self.device))
                if hasattr(param, "ds_id"):   # ZeRO-3: the model's own partition too
                    with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                        if self.rank == 0:
                            param.data.copy_(value.to(param.device, param.dtype))
                else:
                    param.data.copy_(value.to(param.device, param.dtype))
                saved = whole_optimizer.state.get(whole.params[name]) or {}
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in saved:
                        safe_set_full_optimizer_state(param, saved[key].to(self.device), key)
                step = saved.get("step", step)
        if step is not None:
            for state in self.optimizer.state.values():
                if "step" in state:
                    state["step"] = step.clone().to(state["step"].device) if torch.is_tensor(state["step"]) \
                        else float(step)
        for group, saved in zip(self.optimizer.param_groups, whole_optimizer.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})

    def _restore_best(self) -> None:
        self.finish_weights()
        if self.rank == 0:
            TrainLoop._restore_best(self)

    # -- the end: rank 0's model whole and plain --------------------------------------------
    def finish_weights(self) -> None:
        """Gather every weight onto rank 0, take DeepSpeed off the model (every rank takes part; once)."""
        if self.whole:
            return
        import deepspeed
        trainable = self.whole_trainable()
        whole: dict[int, torch.Tensor] = {}
        seen: set[int] = set()
        for _, param in self.model.named_parameters(remove_duplicate=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.requires_grad:
                continue
            if hasattr(param, "ds_id"):   # a frozen ZeRO-3 partition: gathered too
                with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                    whole[id(param)] = param.data.detach().to("cpu").clone()
            else:
                whole[id(param)] = param.data.detach().to("cpu").clone()
        by_id = {id(p): trainable[n] for n, p in self._named}
        self.engine.destroy()
        self.whole = True
        if self.rank != 0:
            return
        made: dict[int, torch.nn.Parameter] = {}
        with torch.no_grad():
            for module in self.model.modules():
                params = {}
                for key, param in module._parameters.items():
                    if param is None:
                        params[key] = None
                        continue
                    if id(param) not in made:
                        value = by_id.get(id(param), whole.get(id(param)))
                        made[id(param)] = torch.nn.Parameter(value.to(self.device, param.dtype),
                                                             requires_grad=param.requires_grad)
                    params[key] = made[id(param)]
                module._parameters = dict(params)   # ZeRO-3's ZeROOrderedDict goes
        self._named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]


class DeepSpeedZero2TrainLoop(DeepSpeedTrainLoop):
    strategy = "deepspeed-zero2"
    stage = 2
