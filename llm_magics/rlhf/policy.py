"""What `%rlhf ppo` reads and returns: its prompts, its reward, and the tuned policy as a Result."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..data import infer_text_column, load_frame, lookup
from ..engine.device import compute_dtype, dtype_name, eval_mode
from ..errors import UsageError, closest
from ..method import Result


def load_prompts(ref: Any, column: str | None, namespace: dict | None) -> list[str]:
    if ref is None:
        raise UsageError("--prompts is required: a variable, a file or a list of prompt strings")
    frame = load_frame(ref, namespace, "--prompts")
    if frame.empty:
        raise UsageError("--prompts is empty; pass at least one prompt")
    if column is None and "prompt" in frame.columns:
        column = "prompt"
    column = infer_text_column(frame, column, flag="--prompt-column", role="--prompts")
    prompts = [str(p) for p in frame[column].dropna().tolist() if str(p).strip()]
    if not prompts:
        raise UsageError(f"--prompts: column {column!r} holds no non-empty prompt")
    return prompts


def resolve_reward(ref: Any, namespace: dict | None) -> tuple[Callable, str]:
    """(a callable(prompts, completions) -> floats, its name for messages)."""
    if ref is None:
        raise UsageError("--reward is required: a %rlhf reward Result, its run id, or a Python "
                         "callable(prompts, completions) -> floats")
    obj = lookup(ref, namespace) if isinstance(ref, str) else ref
    name = ref if isinstance(ref, str) else getattr(obj, "__name__", type(obj).__name__)
    if callable(obj):
        return obj, str(name)
    if isinstance(obj, str):
        from .reward import load_reward
        try:
            return load_reward(obj), obj
        except UsageError:
            callables = [k for k, v in (namespace or {}).items() if callable(v) and not k.startswith("_")]
            near = closest(obj, callables)
            raise UsageError(f"--reward {obj!r}: no such variable, reward-model run or folder"
                             + (f"; did you mean {near}?" if near else "; pass a callable variable or a "
                                "%rlhf reward Result")) from None
    raise UsageError(f"--reward: a {type(obj).__name__} is not a reward; pass a %rlhf reward Result or a "
                     "callable(prompts, completions) -> floats")


@dataclass
class PpoResult(Result):
    """The tuned policy: `.generate(prompts)` samples from it; `.history` holds every step's numbers."""
    history: pd.DataFrame | None = field(default=None, repr=False)
    _policy: Any = field(default=None, repr=False)

    @classmethod
    def from_trainer(cls, trainer, status: str, o, source, loaded, plan, ctx, device) -> "PpoResult":
        rows = [{k: v for k, v in vars(s).items() if k != "samples"} for s in trainer.history]
        history = pd.DataFrame(rows)
        metrics: dict[str, float] = {"steps": len(rows)}
        if rows:
            rewards = history["reward"].to_numpy()
            k = min(3, len(rewards))
            metrics.update(reward_first3=float(rewards[:k].mean()), reward_last3=float(rewards[-k:].mean()),
                           kl_mean=float(history["kl"].mean()), kl_last=float(history["kl"].iloc[-1]),
                           kl_k3_mean=float(history["kl_k3"].mean()),
                           first_ratio_max_dev=float(history["first_ratio_max_dev"].max()),
                           first_kl_to_rollout=float(history["first_approx_kl"].abs().max()),
                           response_len=float(history["response_len"].mean()))
            metrics["reward_gain"] = metrics["reward_last3"] - metrics["reward_first3"]
            if not np.isfinite(history[["reward", "kl", "policy_loss", "value_loss"]].to_numpy()).all():
                metrics["nan_seen"] = 1.0
        samples = pd.DataFrame([{"step": s.step, "prompt": p, "completion": c, "reward": r}
                                for s in trainer.history[-3:] for p, c, r in s.samples])
        folder = ctx.run_dir / "policy"
        model = trainer.policy.model
        model.save_pretrained(folder, safe_serialization=True)
        loaded.tokenizer.save_pretrained(folder)
        if o.method != "full":   # a %lora adapter too: %lora adapters lists it; use / merge / save work
            adopt_adapter(model, ctx.run_id, o.method, source, loaded, plan, ctx, trained_as=ctx.run_id)
        from safetensors.torch import save_file
        save_file({k: v.detach().cpu().contiguous() for k, v in trainer.policy.value_head.state_dict().items()},
                  str(folder / "value_head.safetensors"))
        dtype, dtype_notes = compute_dtype(next(model.parameters()).dtype, trainer.policy.autocast)
        result = cls(method="rlhf ppo", model=source.short, metrics=metrics, status=status,
                     trainable_params=plan.trainable, total_params=plan.total, device=str(device),
                     dtype=dtype, notes=dtype_notes,
                     artifacts={"run_dir": str(ctx.run_dir), "policy": str(folder)},
                     tables={"history": history, "samples": samples} if rows else {},
                     history=history, _policy=trainer.policy)
        result.tokens_per_s = trainer.tokens / max(trainer.seconds, 1e-9)
        result.rows_per_s = len(rows) * trainer.config.batch_size / max(trainer.seconds, 1e-9)
        result.notes.append(f"KL to the reference: mean {metrics.get('kl_mean', float('nan')):.3g} nats per "
                            f"completion (k1; k3 {metrics.get('kl_k3_mean', float('nan')):.3g})")
        if o.method != "full":
            result.artifacts["adapter"] = str(ctx.run_dir / "adapter")
            result.notes.append(f"adapter {ctx.run_id!r} is loaded: %lora use {ctx.run_id} · %lora merge {ctx.run_id}")
        if status == "stopped":
            result.notes.append(f"stopped after {len(rows)} of {o.steps} steps; the policy as it was then is kept")
        return result

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 24, do_sample: bool = True, **kwargs):
        if self._policy is None:
            raise RuntimeError("the policy was released (%llm free); load it from artifacts['policy']")
        single = isinstance(prompts, str)
        policy = self._policy
        tok = policy.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok([prompts] if single else list(prompts), return_tensors="pt", padding=True).to(policy.device)
        finally:
            tok.padding_side = side
        with eval_mode(policy.model):
            out = policy.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                        pad_token_id=policy.pad_id, eos_token_id=policy.eos_id, **kwargs)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return texts[0] if single else texts

    def release(self) -> None:
        self._policy = None

    def save(self, path: str | Path) -> Path:
        folder = Path(path).expanduser()
        self._policy.model.save_pretrained(folder, safe_serialization=True)
        self._policy.tokenizer.save_pretrained(folder)
        self.artifacts["saved"] = str(folder)
        return folder


@dataclass
class PreferenceResult(Result):
    """A policy tuned on preferences through TRL: `.generate(prompts)`; with a tuner, `.adapter` names
    the `%lora` adapter it became (`%lora adapters` lists it; use/merge/save work)."""
    history: pd.DataFrame | None = field(default=None, repr=False)
    adapter: str = ""
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @classmethod
    def build(cls, method_name: str, o, source, loaded, policy, plan, status, metrics, logs, data, ctx, device,
              notes, name, autocast=None) -> "PreferenceResult":
        history = pd.DataFrame(logs)
        dtype, dtype_notes = compute_dtype(next(policy.parameters()).dtype, autocast)
        result = cls(method=method_name, model=source.short, metrics=metrics, status=status,
                     data_fingerprint=data.fingerprint, trainable_params=plan.trainable, total_params=plan.total,
                     device=str(device), dtype=dtype,
                     artifacts={"run_dir": str(ctx.run_dir)}, notes=list(notes) + dtype_notes,
                     tables={"history": history} if len(history) else {}, history=history,
                     _model=policy, _tokenizer=loaded.tokenizer)
        if o.method == "full":
            folder = ctx.run_dir / "policy"
            policy.save_pretrained(folder, safe_serialization=True)
            loaded.tokenizer.save_pretrained(folder)
            result.artifacts["policy"] = str(folder)
        else:
            result.adapter = name
            result.artifacts["adapter"] = str(adopt_adapter(policy, name, o.method, source, loaded, plan, ctx))
            result.notes.append(f"adapter {name!r} is loaded: %lora use {name} · %lora save {name} PATH · "
                                f"%lora merge {name}")
        if status == "stopped":
            result.notes.append(f"stopped at step {metrics.get('steps')}; the policy as it was then is kept")
        return result

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int = 64, do_sample: bool = False, **kwargs):
        if self._model is None:
            raise RuntimeError("the policy was released (%llm free)")
        if self.adapter:
            from ..adapters import hub
            adapter_set, _ = hub().find(self.adapter)
            with adapter_set.using(self.adapter) as model:
                return _generate(model, self._tokenizer, prompts, max_new_tokens, do_sample, **kwargs)
        return _generate(self._model, self._tokenizer, prompts, max_new_tokens, do_sample, **kwargs)

    def release(self) -> None:
        if not self.adapter:   # the hub owns an adapter's model; `%llm free` empties it
            self._model = None


def _generate(model, tok, prompts, max_new_tokens, do_sample, **kwargs):
    single = isinstance(prompts, str)
    side, tok.padding_side = tok.padding_side, "left"
    device = next(model.parameters()).device
    try:
        enc = tok([prompts] if single else list(prompts), return_tensors="pt", padding=True).to(device)
    finally:
        tok.padding_side = side
    with eval_mode(model):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **kwargs)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return texts[0] if single else texts


def adopt_adapter(peft_model, name: str, method: str, source, loaded, plan, ctx, trained_as: str = "default") -> Path:
    """The trained adapter joins the session's adapter hub under `name`: a normal `%lora` adapter.
    TRL trains it as 'default': it is saved, reloaded under its name, and 'default' dropped."""
    import tempfile

    from ..adapters import AdapterInfo, AdapterSet, hub
    if trained_as != name:
        with tempfile.TemporaryDirectory() as tmp:
            peft_model.save_pretrained(tmp, selected_adapters=[trained_as], safe_serialization=True)
            written = Path(tmp) / trained_as if (Path(tmp) / trained_as).is_dir() else Path(tmp)
            peft_model.load_adapter(str(written), adapter_name=name)
        peft_model.set_adapter(name)
        peft_model.delete_adapter(trained_as)
    for param in peft_model.parameters():
        param.requires_grad = False
    peft_model.eval()
    info = AdapterInfo(name=name, method=method, peft_type=str(peft_model.peft_config[name].peft_type.value),
                       task="sft", model=source.name, model_fingerprint=loaded.fingerprint,
                       dtype=dtype_name(loaded.dtype), trainable_params=plan.trainable, origin=ctx.run_id)
    adapter_set = AdapterSet(peft_model, peft_model, loaded.tokenizer, info.key, {name: info}, active=name)
    folder = adapter_set.save(name, ctx.run_dir / "adapter")
    hub().adopt(info, folder, lambda: adapter_set)
    return folder
