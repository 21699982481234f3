"""`%rlhf eval` (a tuned policy against its reference under a reward) and `%rlhf collect` (the widget
that gathers human preferences)."""
from __future__ import annotations

import torch

from ...errors import UsageError
from ...models import load_model, resolve
from .common import copy_tokenizer_left
from .options import CollectOptions, EvalOptions


def run_eval(o: EvalOptions, ctx):
    from ...method import Result
    from ...rlhf.evaluate import evaluate, policy_of
    from ...rlhf.policy import load_prompts, resolve_reward
    reward, reward_name = resolve_reward(o.reward, ctx.namespace)
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    model, reference, tokenizer, base = policy_of(o.run, ctx.namespace, ctx.settings)
    progress = ctx.progress(f"rlhf eval · {base} · reward {reward_name}")
    progress.start(total=len(prompts), unit="prompts")
    metrics, table = evaluate(model, reference, tokenizer, reward, reward_name, prompts, o.max_new_tokens,
                              o.temperature, o.batch_size, o.seed, o.samples)
    progress.advance(len(prompts))
    progress.end("ok", win_rate=metrics["win_rate"], kl=metrics["kl_mean"])
    return Result(method="rlhf eval", model=base, metrics=metrics, tables={"sample pairs": table},
                  notes=[f"win rate counts ties as half; KL in nats per completion (k1; k3 "
                         f"{metrics['kl_k3_mean']:.3g})"])


def run_collect(o: CollectOptions, ctx):
    from pathlib import Path

    from ...rlhf.collect import CollectSession, sampler
    from ...rlhf.policy import load_prompts
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    path = Path(o.path).expanduser()
    if path.suffix.lower() != ".jsonl":
        raise UsageError(f"{o.path}: choices are written as JSON lines; name a .jsonl file")
    loaded = load_model(resolve(o.model), "causal_lm", ctx.device(o.device), torch.float32)
    tok = loaded.tokenizer
    if tok.padding_side != "left":
        tok = copy_tokenizer_left(tok)
    session = CollectSession(path, prompts, sampler(loaded.model, tok, o.k, o.max_new_tokens, o.temperature,
                                                    o.seed))
    if o.out:
        ctx.display(session)
    return session

