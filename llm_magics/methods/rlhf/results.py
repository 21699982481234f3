"""The Results of `%rlhf`: a reward model, a policy tuned through TRL, a policy tuned by our PPO; and how a
reward is named on a command line (a Result, its run id or folder, or any Python callable)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ...data import lookup
from ...engine.device import compute_dtype
from ...engine.generation import complete
from ...errors import UsageError, closest
from ...method import Result
from ...preference.policy import adopt_adapter
from ...preference.reward import META, encode, find_reward_folder, load_folder, rewards


@dataclass
class RewardResult(Result):
    """A trained reward model: `.score(texts)` or `.score(prompts, responses)` → one float each."""
    history: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _max_length: int = 256
    _folder: str = ""
    model_in_folders = True   # a launched run's kernel loads it from its folder (artifacts["reward_model"])

    def _need_model(self):
        if self._model is None:
            if not self.folder:
                raise RuntimeError("the reward model was released (%llm free) and was never saved")
            self._model, self._tokenizer, meta = load_folder(Path(self.folder))
            self._max_length = meta.get("max_length", self._max_length)
        return self._model

    @property
    def folder(self) -> str:
        """Where the reward model is saved (what `%llm export` copies into a job); empty if never saved."""
        return self._folder or self.artifacts.get("reward_model", "")

    @property
    def tokenizer(self):
        self._need_model()
        return self._tokenizer

    def score(self, texts, responses=None) -> list[float]:
        """Rewards of whole texts, or of responses after their prompts (prompt + response, as trained)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if responses is not None:
            responses = [responses] if isinstance(responses, str) else list(responses)
            if len(responses) != len(texts):
                raise UsageError(f"score(prompts, responses): {len(texts)} prompts but {len(responses)} responses")
            texts = [p + r for p, r in zip(texts, responses)]
        model = self._need_model()
        ids = encode(self._tokenizer, texts, self._max_length)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        return rewards(model, ids, pad, next(model.parameters()).device).tolist()

    __call__ = score

    def check_readable(self, texts: Sequence[str], name: str = "reward") -> None:
        """The text bridge: the policy's text is decoded and re-tokenized with this model's tokenizer;
        refuse when that tokenizer reads most of it as unknown tokens."""
        tokenizer = self.tokenizer
        unk = tokenizer.unk_token_id
        if unk is None or not texts:
            return
        ids = [i for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in row]
        if ids and sum(i == unk for i in ids) / len(ids) > 0.5:
            raise UsageError(f"--reward {name}: its tokenizer reads {100 * sum(i == unk for i in ids) / len(ids):.0f}% "
                             "of the prompts as unknown tokens; train the reward model on text like the policy's")

    def release(self) -> None:
        if self._folder:   # reloaded on the next .score()
            self._model = None


def load_reward(ref: str | Path, settings=None) -> RewardResult:
    """A saved reward model — its run id (from the run store) or its folder — as a RewardResult."""
    folder, row = find_reward_folder(ref, settings)
    result = RewardResult(method="rlhf", command="reward", _folder=str(folder))
    if row:
        result.run_id, result.metrics, result.model = row["run_id"], row.get("metrics", {}), row.get("model", "")
        result.artifacts = row.get("artifacts", {})
    meta = json.loads((folder / META).read_text()) if (folder / META).exists() else {}
    result._max_length = meta.get("max_length", 256)
    return result


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
        policy = self._policy
        return complete(policy.model, policy.tokenizer, prompts, max_new_tokens, do_sample=do_sample,
                        pad_token_id=policy.pad_id, eos_token_id=policy.eos_id, **kwargs)

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
    model_in_folders = True   # the adapter's folder, or the fully tuned policy's

    def restore(self, options, rebuild) -> None:
        """A launched run's policy in the kernel: the LoRA adapter joins the session's adapters (as a one-process
        run leaves it); a fully tuned policy loads on the CPU."""
        if self.adapter:
            from ...adapters import hub
            from ...adapters.session import load_adapter
            load_adapter(self.artifacts["adapter"], self.adapter, None, lambda: torch.device("cpu"))
            adapter_set, _ = hub().find(self.adapter)
            self._model, self._tokenizer = adapter_set.peft, adapter_set.tokenizer
            return
        folder = self.artifacts.get("policy")
        if folder and Path(folder).is_dir():
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ...models import hold
            self._model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            hold(self)

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
            from ...adapters import hub
            adapter_set, _ = hub().find(self.adapter)
            with adapter_set.using(self.adapter) as model:
                return complete(model, self._tokenizer, prompts, max_new_tokens, do_sample=do_sample, **kwargs)
        return complete(self._model, self._tokenizer, prompts, max_new_tokens, do_sample=do_sample,
                        **kwargs)

    def release(self) -> None:
        if not self.adapter:   # the hub owns an adapter's model; `%llm free` empties it
            self._model = None
