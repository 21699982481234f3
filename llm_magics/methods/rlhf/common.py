"""What the %rlhf commands share: preference data with --max-rows, the causal LM a policy command loads,
its adapter config."""
from __future__ import annotations

import torch

from ...engine.limits import check_generation
from ...errors import UsageError
from ...models import load_model


def preference_data(o, ctx):
    """(the split preference pairs, notes) of --data/--validation/--test, --max-rows applied (seeded)."""
    from ...preference.data import prepare_preferences
    data = prepare_preferences(o.data, o.validation, o.test, seed=o.seed, val_size=o.val_size,
                               test_size=o.test_size, namespace=ctx.namespace, prompt=o.prompt,
                               chosen=o.chosen, rejected=o.rejected)
    notes = list(data.notes)
    if o.max_rows and len(data.train) > o.max_rows:
        data.train = data.train.sample(o.max_rows, random_state=o.seed).reset_index(drop=True)
        notes.append(f"training on {o.max_rows} of the pairs (--max-rows, seed {o.seed})")
    return data, notes


def copy_tokenizer_left(tokenizer):
    import copy
    tok = copy.copy(tokenizer)
    tok.padding_side = "left"
    return tok


def load_policy(kind: str, o, source, device, dtype: torch.dtype):
    """The causal LM a policy command tunes, in `dtype` (`TrainingMethod.load_dtype`); an encoder is one
    UsageError."""
    from ...models import architecture_kind
    loaded = load_model(source, "causal_lm", device, dtype, fresh=True, trust_remote_code=o.trust_remote_code)
    if architecture_kind(loaded.model.config) != "decoder":
        raise UsageError(f"--policy {source.short} is not a causal LM; {kind.upper()} needs a decoder (e.g. smollm2)")
    if hasattr(o, "max_new_tokens"):   # the commands that sample from it (ppo, grpo, rloo)
        check_generation(o.max_new_tokens, loaded.tokenizer, loaded.model)
    return loaded


def policy_adapter_config(o, model, source, steps: int, dropout: float | None = None):
    """The PEFT config of `--method` (a `%lora` method) for a causal-LM policy."""
    from peft import TaskType

    from ...adapters.configs import AdapterSpec, build_config
    spec = AdapterSpec(method=o.method, task="sft", r=o.r, alpha=o.alpha,
                       dropout=getattr(o, "dropout", 0.0) if dropout is None else dropout,   # dpo|kto|orpo: none
                       target=tuple(o.target), seed=o.seed)
    return build_config(spec, model, TaskType.CAUSAL_LM, steps, source.path)

