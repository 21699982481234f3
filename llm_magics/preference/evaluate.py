"""`%rlhf eval`: a tuned policy against its reference under a reward, on held-out prompts.

For each prompt one completion is sampled from the policy and one from the reference (same
sampling settings); the reward scores both; the win rate counts ties as half. The KL is the
policy's own samples' Σ_t log π − log π_ref (k1, nats per completion) with k3 beside it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import UsageError
from . import ppo_core as core
from .ppo import PolicyWithValue, call_reward


def _from_run(ref: str, settings) -> tuple[Any, Any, Any, str]:
    """(model, reference or None — None: the adapter disabled —, tokenizer, base name) of a recorded run."""
    from ..models import load_model, resolve
    from ..runs import RunStore
    row = RunStore(settings.runs_path).get(ref)
    if not row or not str(row.get("method", "")).startswith("rlhf"):
        raise UsageError(f"{ref!r} is not a variable holding a tuned policy nor the run id of a %rlhf ppo/dpo/... "
                         "run")
    artifacts, options = row.get("artifacts", {}), row.get("options", {})
    base = options.get("policy")
    folder = Path(artifacts.get("policy") or artifacts.get("adapter") or "")
    if not folder.is_dir():
        raise UsageError(f"run {ref}: its policy folder {folder} is gone")
    source = resolve(base)
    loaded = load_model(source, "causal_lm", torch.device("cpu"), torch.float32, fresh=True)
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel
        return PeftModel.from_pretrained(loaded.model, str(folder)).eval(), None, loaded.tokenizer, source.short
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, loaded.model, loaded.tokenizer, source.short


def policy_of(obj: Any, namespace: dict | None, settings) -> tuple[Any, Any, Any, str]:
    from ..data import lookup
    obj = lookup(obj, namespace)
    policy = getattr(obj, "_policy", None)
    if policy is not None:                               # a PpoResult
        return policy.model, policy.reference, policy.tokenizer, getattr(obj, "model", "")
    model = getattr(obj, "_model", None)
    if model is not None and hasattr(model, "generate"):  # a PreferenceResult
        if getattr(obj, "adapter", ""):
            from ..adapters import hub
            adapter_set, _ = hub().find(obj.adapter)
            return adapter_set.activate(obj.adapter), None, obj._tokenizer, obj.model
        from ..models import load_model, resolve
        reference = load_model(resolve(obj.options.get("policy")), "causal_lm", next(model.parameters()).device,
                               torch.float32, fresh=True).model
        return model, reference, obj._tokenizer, obj.model
    if isinstance(obj, str):
        return _from_run(obj, settings)
    raise UsageError(f"RUN: a {type(obj).__name__} is not a tuned policy; pass a %rlhf Result variable or its run id")


@contextlib.contextmanager
def _as_reference(policy: PolicyWithValue):
    """The reference, for generation: the frozen copy, or the policy with its adapter disabled."""
    if policy.reference is not None:
        saved = policy.model
        policy.model = policy.reference
        try:
            yield policy
        finally:
            policy.model = saved
    else:
        with policy.model.disable_adapter():
            yield policy


def evaluate(model, reference, tokenizer, reward, reward_name: str, prompts: list[str], max_new_tokens: int,
             temperature: float, batch_size: int, seed: int, samples: int = 8) -> tuple[dict, pd.DataFrame]:
    from ..engine.rng import RunRng, seeded
    with seeded(seed):   # nn.Linear's initialisation of the (unused) value head draws
        policy = PolicyWithValue(model, tokenizer, reference, temperature)
    rng = RunRng(seed, policy.device)   # sampling draws from the run's generator, not the global one
    rows, kl1, kl3 = [], [], []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        with rng.active():
            roll = policy.rollout(batch, max_new_tokens)
        with torch.no_grad():
            lp, _ = policy.logprobs_values(roll.input_ids, roll.attention_mask, roll.prompt_len)
            ref = policy.reference_logprobs(roll.input_ids, roll.attention_mask, roll.prompt_len)
        lp, ref = lp.cpu(), ref.cpu()
        kl1 += (core.kl_k1(lp, ref) * roll.mask).sum(1).tolist()
        kl3 += (core.kl_k3(lp, ref) * roll.mask).sum(1).tolist()
        with _as_reference(policy) as as_ref, rng.active():
            ref_roll = as_ref.rollout(batch, max_new_tokens)
        tuned = call_reward(reward, batch, roll.completions, reward_name).tolist()
        base = call_reward(reward, batch, ref_roll.completions, reward_name).tolist()
        rows += [{"prompt": p, "policy": c, "reference": r, "policy_reward": a, "reference_reward": b}
                 for p, c, r, a, b in zip(batch, roll.completions, ref_roll.completions, tuned, base)]
    table = pd.DataFrame(rows)
    diff = table["policy_reward"] - table["reference_reward"]
    metrics = {"win_rate": float((diff > 0).mean() + 0.5 * (diff == 0).mean()),
               "policy_reward": float(table["policy_reward"].mean()),
               "reference_reward": float(table["reference_reward"].mean()),
               "kl_mean": float(np.mean(kl1)), "kl_k3_mean": float(np.mean(kl3)), "prompts": len(table)}
    return metrics, table.head(samples)
