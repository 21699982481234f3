"""`%rlhf eval` (a tuned policy against its reference under a reward) and `%rlhf collect` (the widget
that gathers human preferences)."""
from __future__ import annotations

import torch

from ...engine.limits import check_generation
from ...errors import UsageError
from ...models import load_model, resolve
from .common import copy_tokenizer_left
from .options import CollectOptions, EvalOptions


def run_eval(o: EvalOptions, ctx):
    from ...method import Result
    from ...preference.evaluate import evaluate, policy_of
    from ...preference.policy import load_prompts
    from .results import resolve_reward
    reward, reward_name = resolve_reward(o.reward, ctx.namespace)
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    model, reference, tokenizer, base = policy_of(o.run, ctx.namespace, ctx.settings)
    check_generation(o.max_new_tokens, tokenizer, model)
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

    from ...preference.collect import CollectSession, blind_sampler, check_file, sampler
    from ...preference.policy import load_prompts
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    path = Path(o.path).expanduser()
    if path.suffix.lower() != ".jsonl":
        raise UsageError(f"{o.path}: choices are written as JSON lines; name a .jsonl file")
    check_file(path)
    if o.models:
        writers = dict(_writer(item, ctx, o.device, o.max_new_tokens) for item in o.models)
        generate = blind_sampler(writers, o.max_new_tokens, o.temperature, o.seed)
    else:
        loaded = _causal_lm(o.model, ctx, o.device, "--model")
        check_generation(o.max_new_tokens, loaded.tokenizer, loaded.model)
        generate = sampler(loaded.model, copy_tokenizer_left(loaded.tokenizer), o.k, o.max_new_tokens,
                           o.temperature, o.seed)
    session = CollectSession(path, prompts, generate)
    for note in session.notes:
        ctx.write(note + "\n")
    if o.out:
        ctx.display(session)
    return session


def _causal_lm(name, ctx, device: str, flag: str):
    """A causal LM that writes completions; an encoder (it would write random text) is one line."""
    from ...models import architecture_kind
    source = resolve(name)
    loaded = load_model(source, "causal_lm", ctx.device(device), torch.float32)
    if architecture_kind(loaded.model.config) != "decoder":
        raise UsageError(f"{flag} {source.short} is not a causal LM; completions need a decoder (e.g. smollm2)")
    return loaded


def _writer(item, ctx, device: str, max_new_tokens: int):
    """(name, a factory of a context yielding (model, tokenizer)) for one `--models` entry: a loaded
    adapter's name, a %rlhf Result (variable or run id), or a causal LM (alias, folder or hub id)."""
    import contextlib

    from ...adapters import hub
    from ...data import lookup
    from ...preference.evaluate import policy_of
    obj = lookup(item, ctx.namespace)
    name = item if isinstance(item, str) else (getattr(obj, "run_id", "") or type(obj).__name__)
    adapter = obj if isinstance(obj, str) and obj in hub().names() else getattr(obj, "adapter", "")
    if adapter:   # switched in for each generation: several adapters of one base take turns
        adapter_set, _ = hub().find(adapter)
        if not hasattr(adapter_set.model, "generate"):
            raise UsageError(f"--models {name}: adapter {adapter!r} is a classifier's; collect compares causal LMs")

        @contextlib.contextmanager
        def using():
            with adapter_set.using(adapter) as model:
                yield model, copy_tokenizer_left(adapter_set.tokenizer)
        return name, using
    held = getattr(obj, "_policy", None)
    if held is not None:                                   # a PpoResult: its policy, as held
        model, tokenizer = held.model, held.tokenizer
    elif hasattr(getattr(obj, "_model", None), "generate"):  # a full-trained PreferenceResult, as held
        model, tokenizer = obj._model, obj._tokenizer
    elif not isinstance(obj, str) or ctx.store.get(obj):   # a run id (policy_of also loads its reference)
        model, _, tokenizer, _ = policy_of(obj, ctx.namespace, ctx.settings)
    else:
        loaded = _causal_lm(obj, ctx, device, "--models")
        model, tokenizer = loaded.model, loaded.tokenizer
    check_generation(max_new_tokens, tokenizer, model)
    tokenizer = copy_tokenizer_left(tokenizer)
    return name, lambda: contextlib.nullcontext((model, tokenizer))
