"""The training half of the engine: one loop for every method that trains.

A method hands the loop a `TrainTask` (how to batch rows, compute a loss,
evaluate) and a `TrainConfig`; the loop does the rest: AdamW (fused on CUDA and CPU)
with warmup and a linear/cosine schedule, bf16 autocast on GPUs that support
it (fp32 on CPU), gradient accumulation and clipping, length-grouped batches,
evaluation every epoch or every N steps, early stopping, the best checkpoint
kept as safetensors, resumable checkpoints, out-of-memory back-off, and a
clean stop between optimizer steps (Stop button, or a kernel interrupt).

Built on plain PyTorch and transformers' schedulers rather than
`accelerate.Accelerator`: its process-wide state cannot change mixed precision
within one notebook session, and a single-device loop needs none of it.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import checkpoint
from ..errors import UsageError
from .batching import few_training_shapes, grouped_batches, is_oom
from .device import empty_cache
from .fast_paths import fast_paths
from .rng import RunRng
from .throughput import Throughput

SCHEDULERS = ("linear", "cosine", "constant")
FUSED_ADAMW = ("cuda", "cpu")   # devices whose runs step AdamW fused (elsewhere torch's default)


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.01
    warmup: float = 0.06            # share of optimizer steps spent warming up
    scheduler: str = "linear"
    eval_every: int | None = None   # optimizer steps; None: at the end of every epoch
    patience: int | None = None     # evaluations without improvement before stopping
    best_metric: str = "val_loss"
    greater_is_better: bool = False
    seed: int = 0
    autocast: torch.dtype | None = None   # bf16/fp16 on GPUs, None on CPU
    group_by_length: bool = True
    # Per-parameter-group learning rates: (name, predicate(param_name, param), peak lr); a parameter
    # goes to the first group whose predicate takes it, else trains at `lr`.
    param_groups: tuple[tuple[str, Callable[[str, torch.nn.Parameter], bool], float], ...] = ()


@dataclass
class WeightsState:
    """JSON state saved and restored with the best weights."""
    save: Callable[[], dict[str, Any]]
    load: Callable[[dict[str, Any]], None]


class TrainTask(Protocol):
    """What a method provides; the loop owns everything else."""
    lengths: list[int]                      # per training row, for length grouping

    def batch(self, indices: np.ndarray, device: torch.device) -> dict[str, Any]: ...
    def loss(self, model, batch: dict[str, Any]) -> tuple[torch.Tensor, int]: ...   # (loss, real tokens)
    def evaluate(self, model) -> dict[str, float]: ...                              # on validation


@dataclass
class Outcome:
    status: str                             # ok | stopped
    history: list[dict[str, float]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)   # (optimizer step, mean train loss)
    best: dict[str, float] | None = None
    steps: int = 0
    total_steps: int = 0
    epochs_run: float = 0.0
    trained: Throughput = field(default_factory=Throughput)   # optimizer steps only, evaluation excluded
    notes: list[str] = field(default_factory=list)
    weights: Path | None = None             # the folder holding the weights the model ends with, if on disk

    @property
    def tokens_per_s(self) -> float | None:
        return self.trained.tokens_per_s

    @property
    def rows_per_s(self) -> float | None:
        return self.trained.rows_per_s


class _InterruptToStop:
    """While training on the main thread, the first Ctrl-C / kernel interrupt asks for a
    clean stop at the next step boundary; a second one interrupts at once."""

    def __init__(self, progress):
        self.progress = progress
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.progress.should_stop:
            raise KeyboardInterrupt
        self.progress.request_stop()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def steps_per_epoch(rows: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch (grouped or not, an epoch has ceil(rows / batch) batches)."""
    return math.ceil(math.ceil(rows / batch_size) / grad_accum)


class TrainLoop:
    def __init__(self, model: torch.nn.Module, task: TrainTask, config: TrainConfig, progress,
                 folder: Path, device: torch.device, before_zero_grad: Callable[[int], None] | None = None,
                 weights_state: WeightsState | None = None):
        """`before_zero_grad(step)` runs after each optimizer step while gradients still exist
        (AdaLoRA reallocates its ranks from them). `weights_state` keeps non-tensor state that
        belongs with the weights (AdaLoRA's rank pattern) in the best checkpoint, so the restored
        best weights come back with it."""
        self.model, self.task, self.config, self.progress = model, task, config, progress
        self.folder, self.device = Path(folder), device
        self.before_zero_grad = before_zero_grad
        self.weights_state = weights_state
        self.batch_size, self.grad_accum = config.batch_size, config.grad_accum
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("nothing to train: every parameter is frozen")
        self.optimizer = make_optimizer(model, config, device)
        self.steps_per_epoch = steps_per_epoch(len(task.lengths), self.batch_size, self.grad_accum)
        self.total_steps = self.steps_per_epoch * config.epochs
        from transformers import get_scheduler
        name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
        self.scheduler = get_scheduler(name, self.optimizer, num_warmup_steps=int(config.warmup * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if config.autocast == torch.float16 else None
        self.state = {"epoch": 0, "position": 0, "step": 0, "plan": None, "history": [], "losses": [], "best": None,
                      "since_best": 0, "tokens": 0, "rows": 0, "seconds": 0.0,
                      "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        self.notes: list[str] = []
        self.early_stopped = False
        # This run's own generator (dropout masks): concurrent runs must not draw from each other's.
        self.rng = RunRng(config.seed, device)
        self.resumed_from: Path | None = None
        self.first_loss_checked = False   # after a resume: the first batch's loss must be finite
        self.weights_dir: Path | None = None   # checkpoint-best, once its weights are restored into the model

    # -- plan ----------------------------------------------------------------------------
    def _plan(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.config.seed, epoch])
        return grouped_batches(self.task.lengths, self.batch_size, rng, self.config.group_by_length)

    @property
    def last_dir(self) -> Path:
        return self.folder / "checkpoint-last"

    @property
    def best_dir(self) -> Path:
        return self.folder / "checkpoint-best"

    # -- run -----------------------------------------------------------------------------
    def resume(self, folder: Path) -> None:
        """Continue from a checkpoint written by `save_checkpoint` (possibly another run's)."""
        loop = checkpoint.load(folder, self.model, self.optimizer, self.scheduler, rng=self.rng)
        checkpoint.check_position(loop, folder, self.total_steps, self.steps_per_epoch, self.config.epochs)
        self.state.update(loop)
        self.batch_size, self.grad_accum = loop["batch_size"], loop["grad_accum"]
        self.resumed_from = Path(folder)
        best_src = folder.parent / "checkpoint-best"
        if best_src.exists() and best_src != self.best_dir:
            checkpoint.check(best_src, checkpoint.RESUME_TODO)
            import shutil
            shutil.copytree(best_src, self.best_dir, dirs_exist_ok=True)
        self.progress.log(f"resumed at step {self.state['step']} of {self.total_steps} "
                          f"(epoch {self.state['epoch'] + 1})")

    def run(self) -> Outcome:
        cfg, s = self.config, self.state
        self.progress.start(total=self.total_steps, unit="steps", epochs=cfg.epochs)
        self.progress.state.done = s["step"]
        stopped = False
        with _InterruptToStop(self.progress), fast_paths(self.model, self.device, self.config.autocast), \
                few_training_shapes(self.model, self.device, self.config.autocast, max(self.task.lengths, default=0)):
            if s["step"] == 0 and not s["history"]:
                self._evaluate(initial=True)  # the RNG starts seeded; a resumed run restored its own
            while s["epoch"] < cfg.epochs and not stopped:
                stopped = self.progress.should_stop or self._run_epoch()
                if not stopped:
                    s["epoch"] += 1
                    s["position"], s["plan"] = 0, None
                    if cfg.eval_every is None:
                        stopped = self._evaluate()
        status = "stopped" if stopped and not self.early_stopped else "ok"
        if status == "stopped":
            self.save_checkpoint()
            self.notes.append(f"stopped at step {s['step']} of {self.total_steps}; the best checkpoint is kept, "
                              f"and --resume continues from checkpoint-last")
        else:
            import shutil
            shutil.rmtree(self.last_dir, ignore_errors=True)  # optimizer state is 2× the weights
        if s["best"] is not None and checkpoint.has_weights(self.best_dir):
            self._restore_best()
        if status == "stopped":
            self.notes.append(self._weights_note())
        if self.resumed_from is not None and self.resumed_from != self.last_dir:
            # Continued once: its optimizer state goes, and resuming it again is refused.
            try:
                checkpoint.mark_continued(self.resumed_from, self.folder.name)
            except OSError as exc:   # its folder went away meanwhile: the run's result still stands
                self.notes.append(f"could not mark {self.resumed_from} as continued ({exc.strerror or exc})")
        return Outcome(status=status, history=list(s["history"]), losses=[tuple(x) for x in s.get("losses", [])],
                       best=s["best"], steps=s["step"],
                       total_steps=self.total_steps, epochs_run=s["step"] / max(self.steps_per_epoch, 1),
                       trained=Throughput(rows=s["rows"], tokens=s["tokens"], seconds=s["seconds"]),
                       notes=self.notes, weights=self.weights_dir)

    def _weights_note(self) -> str:
        """Which step a stopped run's weights, and so its metrics, come from."""
        best, step = self.state["best"], self.state["step"]
        if self.weights_dir is None or best is None:
            return f"its weights and metrics are those of step {step}, where it stopped"
        metric = self.config.best_metric
        return (f"its weights and metrics are the best checkpoint's, from step {best['step']} (epoch {best['epoch']}, "
                f"{metric} {best[metric]:.4g}), not step {step} where it stopped")

    def _restore_best(self) -> None:
        try:
            extra = checkpoint.load_weights(self.model, self.best_dir)
        except UsageError as exc:   # damaged since it was written: say so, score what the model holds
            self.notes.append(f"{exc} — the result keeps the last weights instead")
            self.progress.log(self.notes[-1])
            return
        if self.weights_state is not None and extra is not None:
            self.weights_state.load(extra)
        self.weights_dir = self.best_dir

    def _run_epoch(self) -> bool:
        """Train one epoch from the saved position; True when asked to stop (or early stopping).

        Batches accumulate into a window of `grad_accum`; an out-of-memory error discards the
        window's gradients and replays the window in halves, so no row is lost or counted twice.
        """
        s, cfg = self.state, self.config
        if s["plan"] is None:
            s["plan"] = [b.tolist() for b in self._plan(s["epoch"])]
        train_mode(self.model)
        window_start, window_tokens, window_rows, running = s["position"], 0, 0, []
        started = time.perf_counter()
        while s["position"] < len(s["plan"]):
            indices = np.asarray(s["plan"][s["position"]])
            try:
                loss, tokens = self._forward_backward(indices)
            except Exception as exc:
                if not is_oom(exc) or len(indices) == 1:
                    raise
                s["tokens"] -= window_tokens
                s["rows"] -= window_rows
                window_tokens, window_rows, running = 0, 0, []
                s["position"] = window_start
                self._back_off()
                continue
            if self.resumed_from is not None and not self.first_loss_checked:
                checkpoint.check_first_loss(loss, self.resumed_from)
                self.first_loss_checked = True
            s["position"] += 1
            s["tokens"] += tokens
            s["rows"] += len(indices)
            window_tokens += tokens
            window_rows += len(indices)
            running.append(loss)
            end_of_epoch = s["position"] == len(s["plan"])
            if s["position"] - window_start < self.grad_accum and not end_of_epoch:
                continue
            self._optimizer_step()
            window_start, window_tokens, window_rows = s["position"], 0, 0
            s["seconds"] += time.perf_counter() - started
            s.setdefault("losses", []).append((s["step"], float(np.mean(running))))
            self.progress.advance(1, loss=s["losses"][-1][1])
            self.progress.set(lr=self.scheduler.get_last_lr()[0])
            if s["tokens"]:  # the head-only fast path reads features, not tokens
                self.progress.set(tokens_per_s=s["tokens"] / max(s["seconds"], 1e-9))
            running = []
            if cfg.eval_every and s["step"] % cfg.eval_every == 0 and self._evaluate():
                return True
            if self.progress.should_stop:
                return True
            started = time.perf_counter()
        return False

    def _forward_backward(self, indices: np.ndarray) -> tuple[float, int]:
        batch = self.task.batch(indices, self.device)
        with self.rng.active():
            with torch.autocast(self.device.type, dtype=self.config.autocast,
                                enabled=self.config.autocast is not None):
                loss, tokens = self.task.loss(self.model, batch)
            scaled = loss / self.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return float(loss.detach()), int(tokens)

    def _optimizer_step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.state["step"] += 1
        if self.before_zero_grad:
            self.before_zero_grad(self.state["step"])
        self.optimizer.zero_grad(set_to_none=True)

    def _back_off(self) -> None:
        """Halve the batches from the current window on, double the accumulation: the same
        effective batch, less memory."""
        s = self.state
        self.optimizer.zero_grad(set_to_none=True)
        empty_cache()
        self.batch_size = max(1, self.batch_size // 2)
        self.grad_accum *= 2
        s["batch_size"], s["grad_accum"] = self.batch_size, self.grad_accum
        rest = s["plan"][s["position"]:]
        halves = [part for b in rest for part in (b[:len(b) // 2], b[len(b) // 2:]) if part]
        s["plan"] = s["plan"][:s["position"]] + halves
        message = (f"out of memory: batch size halved to {self.batch_size}, gradient accumulation doubled to "
                   f"{self.grad_accum} (same effective batch)")
        self.notes.append(message)
        self.progress.log(message)

    # -- evaluation and checkpoints --------------------------------------------------------
    def _evaluate(self, initial: bool = False) -> bool:
        """Evaluate, keep the best weights, checkpoint; True when early stopping says stop."""
        s, cfg = self.state, self.config
        self.model.eval()
        with self.rng.active(), torch.no_grad(), torch.autocast(self.device.type, dtype=cfg.autocast,
                                                                enabled=cfg.autocast is not None):
            metrics = self.task.evaluate(self.model)
        train_mode(self.model)
        if not metrics:
            return False
        record = {"step": s["step"], "epoch": round(s["step"] / max(self.steps_per_epoch, 1), 3), **metrics}
        s["history"].append(record)
        self.progress.eval(**metrics)
        if initial:
            return False
        value = metrics.get(cfg.best_metric)
        best = s["best"]
        improved = value is not None and (best is None or (value > best[cfg.best_metric] if cfg.greater_is_better
                                                           else value < best[cfg.best_metric]))
        if improved:
            s["best"], s["since_best"] = record, 0
            checkpoint.save_weights(self.model, self.best_dir,
                                    self.weights_state.save() if self.weights_state is not None else None)
        else:
            s["since_best"] += 1
        self.save_checkpoint()
        if cfg.patience and s["since_best"] >= cfg.patience:
            self.notes.append(f"early stopping: no better {cfg.best_metric} for {cfg.patience} evaluations")
            self.progress.log(self.notes[-1])
            self.early_stopped = True
            return True
        return False

    def save_checkpoint(self) -> None:
        checkpoint.save(self.last_dir, self.model, self.optimizer, self.scheduler, self.state, rng=self.rng)


def train_mode(model: torch.nn.Module) -> None:
    """Train mode for what trains; frozen parts stay in eval mode (no dropout), so training
    through a frozen base sees the same features as the head-only fast path."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms (the usual split), per learning-rate group
    (`config.param_groups`, then the rest at `config.lr`); fused on CUDA and CPU: one kernel over every
    tensor instead of a Python loop over them (LoRA's are many and small)."""
    lrs = [lr for _, _, lr in config.param_groups] + [config.lr]
    split: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = next((i for i, (_, take, _) in enumerate(config.param_groups) if take(name, param)),
                     len(config.param_groups))
        split.setdefault((index, param.ndim < 2 or "norm" in name.lower()), []).append(param)
    groups = [{"params": params, "lr": lrs[index], "weight_decay": 0.0 if no_decay else config.weight_decay}
              for (index, no_decay), params in sorted(split.items(), key=lambda kv: kv[0])]
    return torch.optim.AdamW(groups, lr=config.lr, fused=device.type in FUSED_ADAMW)
