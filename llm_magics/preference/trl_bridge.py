"""Direct preference methods through TRL 1.16, with our data, devices, progress, Stop and adapters.

TRL's defaults are changed where they hurt here: `gradient_checkpointing=False` (it only costs
time on small models), bf16 only where our device picks it (TRL turns it on even on CPU),
no reports, tqdm off (our live view shows the steps). TRL's own checkpoints (trainer.train's
`resume_from_checkpoint`) carry `--resume`: one every tenth of the run and one at Stop, each sealed with our
checksum manifest once whole (`ProgressCallback.on_save`), the one before it removed only then. Our
`ProgressCallback` turns TRL's logs into our events and our Stop button / kernel interrupt into
`control.should_training_stop`.
"""
from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.device import eval_mode
from ..safe_io import verify_manifest, write_manifest
from .reward import pair_accuracy
from .shared_prompt import IGNORE, fit_pair, pair_token_logprobs, split_pairs

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers is a dependency
    TrainerCallback = object

# TRL log keys → the names our live view shows.
SHOWN = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "accuracy",
         "rewards/chosen": "chosen_reward", "rewards/rejected": "rejected_reward", "learning_rate": "lr",
         "reward": "reward", "reward_std": "reward_std", "frac_reward_zero_std": "frac_reward_zero_std", "kl": "kl"}


class ProgressCallback(TrainerCallback):
    """TRL's step/log events → our Progress; our stop request → TRL's clean stop."""

    def __init__(self, progress, reward_signal=None):
        self.progress = progress
        self.reward_signal = reward_signal   # GRPO/RLOO: a signal.RewardSignal fed each step's rewards
        self.logs: list[dict[str, float]] = []
        self.stopped = False
        self._previous = None
        self._saved_at = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self._saved_at = time.monotonic()
        self.progress.start(total=state.max_steps, unit="steps")
        if state.global_step:   # resumed from a checkpoint (its state is loaded before this event)
            self.logs = [{"step": log["step"], **{k: float(v) for k, v in log.items() if isinstance(v, (int, float))}}
                         for log in state.log_history]   # the steps before it: curves and metrics of the whole run
            self.progress.state.done = state.global_step
            self.progress.log(f"resumed at step {state.global_step} of {state.max_steps}")
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, signum, frame):
        if self.progress.should_stop:
            raise KeyboardInterrupt
        self.progress.request_stop()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.advance(1)   # a launched run's ranks other than 0 write nothing (launch/events.py)
        sync = getattr(self.progress, "sync_stop", None)
        if sync is not None:   # a launched worker: every rank stops at the same step, or none does
            sync()
        if self.progress.should_stop and state.global_step < state.max_steps:
            self.stopped = True
            control.should_training_stop = True
        if self.reward_signal is not None and self.reward_signal.end_step():   # --stop-no-signal
            self.stopped = True
            control.should_training_stop = True
        if self.stopped:   # --resume continues from exactly here
            control.should_save = True
        elif control.should_save and not self._save_due(state):
            control.should_save = False
        return control

    def _save_due(self, state) -> bool:
        """TRL asks for a checkpoint every SAVE_EVERY of the run; in one process at most one every SAVE_GAP_S
        seconds, and none at the last step of a run that ends (it would be dropped at once). Launched ranks keep
        TRL's step count: they must agree, and a clock does not."""
        if state.global_step >= state.max_steps:
            return False
        launched = torch.distributed.is_available() and torch.distributed.is_initialized()
        return launched or time.monotonic() - self._saved_at >= SAVE_GAP_S

    def on_save(self, args, state, control, **kwargs):
        """TRL's checkpoint of this step is whole: seal it with checksums, then drop the one before it (so a kill
        at any moment leaves at least one sealed checkpoint)."""
        self._saved_at = time.monotonic()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()   # launched: every rank has written its own RNG file into it
        if state.is_world_process_zero:
            newest = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_manifest(newest)
            for older in trl_checkpoints(Path(args.output_dir)):
                if older != newest:
                    shutil.rmtree(older, ignore_errors=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        shown = {SHOWN[k]: float(v) for k, v in logs.items() if k in SHOWN and isinstance(v, (int, float))}
        if shown:
            self.progress.set(**shown)
        self.logs.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                         if isinstance(v, (int, float))}})

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def trl_common(o, device: torch.device, output_dir, dtype: torch.dtype | None, world: int = 1) -> dict[str, Any]:
    """Arguments every TRL config gets from our options. On `world` launched workers (--devices) --batch-size
    stays the global batch: each worker takes its share, and gloo carries a CPU group (accelerate would
    prefer MPI where it is installed)."""
    extra = {"ddp_backend": "gloo"} if world > 1 and device.type == "cpu" else {}
    return dict(output_dir=str(output_dir), learning_rate=o.peak_lr(),
                per_device_train_batch_size=o.batch_size // world, **extra,
                gradient_accumulation_steps=o.grad_accum, max_steps=o.steps or -1,
                num_train_epochs=getattr(o, "epochs", 1),   # online runs have --steps alone
                seed=o.seed, logging_steps=1, save_strategy="steps", save_steps=SAVE_EVERY, eval_strategy="no",
                report_to=[], disable_tqdm=True, gradient_checkpointing=False,
                bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device.type == "cpu",
                max_grad_norm=o.max_grad_norm or 0.0, warmup_steps=o.warmup, lr_scheduler_type=o.scheduler,
                weight_decay=o.weight_decay, dataloader_pin_memory=device.type == "cuda")


SAVE_EVERY = 0.1   # TRL checkpoints every tenth of the run's steps (a share below 1 is read as one) ...
SAVE_GAP_S = 60.0  # ... at most one a minute in one process: a short run is not slowed by its own checkpoints


def trl_checkpoints(folder: Path) -> list[Path]:
    """TRL's checkpoint folders in `folder` (its output_dir), oldest step first."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def last_sealed_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in `folder` that `ProgressCallback.on_save` sealed and is whole (a kill mid-save
    leaves one without its manifest: the one before it is then still there)."""
    for candidate in reversed(trl_checkpoints(folder)):
        if not verify_manifest(candidate, required=True):
            return candidate
    return None


def drop_checkpoints(folder: Path) -> None:
    """A run that ended needs no checkpoint to continue from: TRL's hold the optimizer state (2× the weights)."""
    for checkpoint in trl_checkpoints(folder):
        shutil.rmtree(checkpoint, ignore_errors=True)


def to_dataset(frame):
    import datasets
    return datasets.Dataset.from_pandas(frame[["prompt", "chosen", "rejected"]].reset_index(drop=True),
                                        preserve_index=False)


def tokenize_pair(tokenizer, prompt: str, chosen: str, rejected: str, max_length: int | None):
    """(prompt, chosen, rejected) ids as TRL's DPOTrainer makes them (each answer ends in EOS and starts where
    the tokenized prompt and prompt+answer diverge), cut to `max_length` with one prompt for both answers."""
    from trl.data_utils import common_prefix_length
    eos = tokenizer.eos_token or ""
    prompt_ids = tokenizer(prompt)["input_ids"]
    joined = [tokenizer(prompt + (a if a.endswith(eos) else a + eos))["input_ids"] for a in (chosen, rejected)]
    start = min(common_prefix_length(prompt_ids, ids) for ids in joined)
    return fit_pair(prompt_ids[:start], joined[0][start:], joined[1][start:], max_length)


@torch.no_grad()
def pair_logprobs(model, tokenizer, frame, max_length: int, batch: int = 8) -> tuple[np.ndarray, np.ndarray] | None:
    """log p(chosen | prompt) and log p(rejected | prompt) per held-out pair, tokenized and cut as DPO trains
    them (`tokenize_pair`), each pair one packed row (shared_prompt.py)."""
    if frame is None or not len(frame):
        return None
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    rows = [dict(zip(("prompt_ids", "chosen_ids", "rejected_ids"), tokenize_pair(tokenizer, p, c, r, max_length)))
            for p, c, r in zip(frame["prompt"].fillna("").astype(str), frame["chosen"].astype(str),
                               frame["rejected"].astype(str))]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate_pairs = DataCollatorForPreference(pad_token_id=pad)
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    chosen, rejected = [], []
    with eval_mode(model):
        for start in range(0, len(rows), batch):
            inputs = {k: v.to(device) for k, v in collate_pairs(rows[start:start + batch]).items()}
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, IGNORE)
            pairs = split_pairs(inputs["input_ids"], inputs["attention_mask"], labels)
            per_token = None if pairs is None else pair_token_logprobs(causal_lm, pairs)
            if per_token is None:   # a prompt cut away entirely, a rescaling head, another attention kernel
                logits = causal_lm(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
                per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(
                    -1, labels[:, 1:].clamp(min=0)[..., None])[..., 0] * (labels[:, 1:] != IGNORE)
            sums = per_token.sum(1).cpu().numpy()
            half = len(sums) // 2
            chosen.extend(sums[:half])
            rejected.extend(sums[half:])
    return np.asarray(chosen), np.asarray(rejected)


def implicit_rewards(policy: tuple | None, reference: tuple | None, beta: float, prefix: str) -> dict[str, float]:
    """DPO's implicit reward β·(log-ratio chosen − log-ratio rejected) on held-out pairs, from the policy's
    and the reference's log-probs (`pair_logprobs`): margin, accuracy (ties count half, as the reward model's),
    and the chosen/rejected log-prob shifts."""
    if policy is None or reference is None:
        return {}
    (pc, pr), (rc, rr) = policy, reference
    chosen, rejected = implicit_pair_rewards(policy, reference, beta)
    margin = chosen - rejected
    return {f"{prefix}_margin": float(margin.mean()), f"{prefix}_accuracy": pair_accuracy(margin),
            f"{prefix}_chosen_shift": float((pc - rc).mean()), f"{prefix}_rejected_shift": float((pr - rr).mean())}


def implicit_pair_rewards(policy: tuple, reference: tuple, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per held-out pair, β·log-ratio of the chosen and of the rejected answer: the policy read as a reward model."""
    (pc, pr), (rc, rr) = policy, reference
    return torch.as_tensor(beta * (pc - rc)), torch.as_tensor(beta * (pr - rr))


def _config(config_cls, values: dict[str, Any]):
    """A TRL config from the values it has fields for (the trainers' configs differ a little)."""
    import dataclasses
    known = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in values.items() if k in known})


def shared_dataset(dataset, folder):
    """The dataset as Arrow files in `folder`, which every launched worker reads (rank 0 writes them). TRL's
    preparation caches beside a dataset's files, and DPO's precomputed reference log-probs are written there by
    rank 0 alone: an in-memory dataset's cache would be a temporary file the other ranks never see."""
    import datasets
    import torch.distributed as dist
    if dist.get_rank() == 0:
        dataset.save_to_disk(str(folder))
    dist.barrier()
    return datasets.load_from_disk(str(folder))


def shared_prompt_dpo_trainer():
    """TRL's DPOTrainer with each pair's prompt run once per forward (shared_prompt.py): the pairs are cut to
    one prompt for both answers when tokenized, and the fused-head forward TRL installs is routed through the
    shared prompt pass, for the reference pass and for training alike."""
    from trl import DPOTrainer

    class SharedPromptDPOTrainer(DPOTrainer):
        prompts_shared: bool | None = None

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return dataset.map(_fit_row, fn_kwargs={"max_length": args.max_length})

        def _precompute_ref_logps(self, *args, **kwargs):
            self.share_prompts()
            return super()._precompute_ref_logps(*args, **kwargs)

        def share_prompts(self) -> bool:
            """Install the shared prompt pass on the causal LM TRL gave its fused head (once). Not for WPO
            weighting or MoE auxiliary losses, which need fields the shared pass does not compute."""
            if self.prompts_shared is None:
                from peft import PeftModel

                from . import shared_prompt
                causal_lm = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
                self.prompts_shared = not self.use_weighting and not self.aux_loss_enabled and \
                    shared_prompt.install(causal_lm)
            return self.prompts_shared
    return SharedPromptDPOTrainer


def _fit_row(example, max_length):
    prompt, chosen, rejected = fit_pair(example["prompt_ids"], example["chosen_ids"], example["rejected_ids"],
                                        max_length)
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def offline_trainer(kind: str, o, model, reference, data, tokenizer, peft_config, callback, common: dict,
                    shared=None):
    """The TRL trainer for `kind` (dpo, kto, orpo) on our normalised pairs. `shared`: on launched workers, the
    folder every rank reads the training pairs from (`shared_dataset`)."""
    values = {**common, "beta": o.beta, "max_length": o.max_length}

    def train_set(dataset):
        return dataset if shared is None else shared_dataset(dataset, shared)
    if kind == "dpo":
        from trl import DPOConfig
        # The reference log-probs are computed once, before training, in batches of 16 (the policy with its
        # adapter disabled, or the policy itself before it moves when training everything): no reference
        # forward per step, and no second copy of the model with --method full.
        # The pairs are ordered by length for that pass (it reads them in order: little padding in its
        # batches); training still draws them in a seeded random order.
        config = _config(DPOConfig, {**values, "truncation_mode": "keep_end", "precompute_ref_log_probs": True,
                                     "precompute_ref_batch_size": max(16, o.batch_size),
                                     # RPO (Pang et al. 2024): DPO's loss plus the chosen answer's NLL
                                     **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, o.sft_weight]}
                                        if o.sft_weight else {})})
        frame = data.train
        longest = frame["prompt"].str.len() + np.maximum(frame["chosen"].str.len(), frame["rejected"].str.len())
        frame = frame.iloc[np.argsort(longest.to_numpy(), kind="stable")]
        trainer = shared_prompt_dpo_trainer()(model=model, ref_model=reference, args=config,
                                              train_dataset=train_set(to_dataset(frame)), processing_class=tokenizer,
                                              peft_config=peft_config, callbacks=[callback])
        trainer.share_prompts()
        return trainer
    if kind == "kto":
        import datasets
        from trl import KTOConfig, KTOTrainer
        frame = data.train
        unpaired = {"prompt": list(frame["prompt"]) * 2,
                    "completion": list(frame["chosen"]) + list(frame["rejected"]),
                    "label": [True] * len(frame) + [False] * len(frame)}
        config = _config(KTOConfig, values)
        return KTOTrainer(model=model, ref_model=reference, args=config,
                          train_dataset=train_set(datasets.Dataset.from_dict(unpaired)), processing_class=tokenizer,
                          peft_config=peft_config, callbacks=[callback])
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        config = _config(ORPOConfig, values)
        return ORPOTrainer(model=model, args=config, train_dataset=train_set(to_dataset(data.train)),
                           processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])
    raise ValueError(kind)


def online_trainer(kind: str, o, model, reward_fn, prompts: list[str], tokenizer, peft_config, callback,
                   common: dict):
    """GRPO or RLOO through TRL: completions sampled from the prompts and scored by our reward."""
    import datasets
    values = {**common, "beta": o.beta, "num_generations": o.num_generations,
              "max_completion_length": o.max_new_tokens, "temperature": o.temperature,
              "per_device_train_batch_size": o.batch_size}
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    if callback.reward_signal is not None:   # the tracker sees each step's rewards as TRL gets them
        reward_fn = callback.reward_signal.recording(reward_fn)
    if kind == "grpo":
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    else:
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    return Trainer(model=model, reward_funcs=reward_fn, args=_config(Config, values), train_dataset=dataset,
                   processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])


def quiet_trainer(build):
    """A TRL trainer whose only progress display is our live view: datasets' bars off while TRL
    prepares the data, TRL's printer/tqdm callbacks removed, its deprecation chatter silenced."""
    import os
    import warnings

    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HfProgress
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tqdm_off = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"          # DPO's reference pass reads it for its bar
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = build()
    finally:
        if bars:
            datasets.enable_progress_bars()
        if tqdm_off is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_off
    for extra in (PrinterCallback, HfProgress):
        trainer.remove_callback(extra)
    return trainer
