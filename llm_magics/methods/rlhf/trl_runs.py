"""`%rlhf dpo|kto|orpo` (offline, on preference pairs) and `grpo|rloo` (online, against a reward) through
TRL, with our data handling, devices, live view, Stop, run store and adapters."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import UsageError
from ...models import hold, resolve, trainable
from ...training import describe_run
from .common import load_policy, policy_adapter_config, preference_data
from .launch import for_the_kernel
from .options import DpoOptions, OnlineOptions
from .reward_signal import probe_only, watch_reward

if TYPE_CHECKING:
    from ...rlhf.policy import PreferenceResult


def check_offline(kind: str, o: DpoOptions) -> None:
    if kind != "dpo" and o.sft_weight:
        raise UsageError(f"--sft-weight is a DPO option (RPO); %rlhf {kind} has no such term: drop it or use dpo")


def launch_offline(method, kind: str, o: DpoOptions, ctx) -> "PreferenceResult":
    """`--devices/--nodes` above 1 (the runner's call): torchrun workers run `run_offline` (launch.py)."""
    from .launch import launch_trl
    check_offline(kind, o)
    return launch_trl(method, kind, o, ctx, f"rlhf {kind} · {resolve(o.policy).short} · --method {o.method} · β={o.beta}")


def run_offline(kind: str, o: DpoOptions, ctx) -> "PreferenceResult":
    """DPO, KTO or ORPO through TRL: the same data, devices, live view, Stop, adapters and metrics."""
    import copy
    import time

    from ...engine.device import train_dtype
    from ...rlhf.trl_bridge import ProgressCallback, implicit_rewards, pair_logprobs, trl_common
    from ...rlhf.policy import PreferenceResult
    from .launch import rank, world
    check_offline(kind, o)
    device = ctx.device(o.device)
    source = resolve(o.policy)
    data, notes = preference_data(o, ctx)
    steps_rows = (o.steps or 0) * o.batch_size * o.grad_accum
    if kind == "dpo" and steps_rows and len(data.train) > steps_rows:
        # The run sees only this many pairs: the reference log-probs are precomputed for those alone.
        data.train = data.train.sample(steps_rows, random_state=o.seed).reset_index(drop=True)
    name = o.name or ctx.run_id
    if o.method != "full":
        from ...adapters import hub
        hub().check_free(name)
    dtype = train_dtype(device, o.dtype)   # TRL's bf16/fp16 flag: autocast over fp32 weights
    progress = ctx.progress(f"rlhf {kind} · {source.short} · --method {o.method} · β={o.beta}")
    loaded = load_policy(kind, o, source, device)
    tokenizer = loaded.tokenizer
    model, reference, peft_config = loaded.model, None, None
    if o.method != "full":
        peft_config = policy_adapter_config(o, model, source, o.steps or 100)
    elif kind == "kto":   # KTO trains against a frozen copy; DPO precomputes the reference's log-probs, ORPO has none
        reference = copy.deepcopy(model).eval()
        for param in reference.parameters():
            param.requires_grad = False
    test_frame = data.test if len(data.test) else data.validation
    from ...rlhf.trl_bridge import offline_trainer
    callback = ProgressCallback(progress)
    started = time.perf_counter()
    # (keep_end is deprecated upstream, and what HH-style pairs need: its warning is silenced)
    common = trl_common(o, device, ctx.run_dir / "trl", dtype, world(ctx))
    shared = ctx.run_dir / "trl" / "pairs" if world(ctx) > 1 else None
    trainer = build_trl_trainer(lambda: offline_trainer(kind, o, model, reference, data, tokenizer, peft_config,
                                                        callback, common, shared))
    build_seconds = time.perf_counter() - started
    if world(ctx) > 1:   # what accelerate made of the worker's process group (MULTI_CPU on gloo, MULTI_GPU)
        state = trainer.accelerator.state
        notes.append(f"trained on {state.num_processes} processes: TRL's trainer as {state.distributed_type.value} "
                     f"({state.backend}), each taking {o.batch_size // world(ctx)} of every {o.batch_size} pairs")
    policy = trainer.model
    plan = trainable.report(policy, f"{o.method}" + (f" r={o.r}" if o.method != "full" else ""))
    describe_run(ctx, progress, plan)
    if rank(ctx) != 0:   # a launched worker other than rank 0: train, then end (rank 0 scores and saves)
        trainer.train()
        from ...engine.distributed import RankDone
        raise RankDone()
    # The held-out reference log-probs, once: the frozen copy, the policy with its adapter disabled, or the
    # policy itself before training moves it.
    if reference is not None:
        ref_lp = pair_logprobs(reference, tokenizer, test_frame, o.max_length)
    elif o.method != "full":
        with policy.disable_adapter():
            ref_lp = pair_logprobs(policy, tokenizer, test_frame, o.max_length)
    else:
        ref_lp = pair_logprobs(policy, tokenizer, test_frame, o.max_length)
    before_lp = ref_lp if reference is None and o.method == "full" else \
        pair_logprobs(policy, tokenizer, test_frame, o.max_length)
    before = implicit_rewards(before_lp, ref_lp, o.beta, "test")
    started = time.perf_counter()
    trainer.train()
    train_seconds = build_seconds + time.perf_counter() - started
    status = "stopped" if callback.stopped else "ok"
    policy = trainer.model.eval()
    metrics = {f"{k}_before": v for k, v in before.items()}
    metrics.update(implicit_rewards(pair_logprobs(policy, tokenizer, test_frame, o.max_length), ref_lp, o.beta,
                                    "test"))
    losses = [log["loss"] for log in callback.logs if "loss" in log]
    if losses:
        metrics["train_loss"] = float(losses[-1])
    metrics["steps"] = int(trainer.state.global_step)
    # TRL's data preparation (tokenising, DPO's reference pass) and its training loop, loading excluded
    metrics["train_seconds"] = train_seconds
    result = PreferenceResult.build(f"rlhf {kind}", o, source, loaded, policy, plan, status, metrics, callback.logs,
                                    data, ctx, device, notes, name, autocast=dtype)
    hold(result)
    progress.end(status, **{k: v for k, v in metrics.items() if k.startswith("test_") and "before" not in k})
    return for_the_kernel(result, ctx)


def run_online(kind: str, o: OnlineOptions, ctx) -> "PreferenceResult":
    import warnings

    from ...engine.device import train_dtype
    from ...rlhf.policy import PreferenceResult, load_prompts, resolve_reward
    from ...rlhf.ppo import call_reward
    from ...rlhf.trl_bridge import ProgressCallback, online_trainer, trl_common
    device = ctx.device(o.device)
    source = resolve(o.policy)
    reward, reward_name = resolve_reward(o.reward, ctx.namespace)
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    name = o.name or ctx.run_id
    if o.method != "full":
        from ...adapters import hub
        hub().check_free(name)
    dtype = train_dtype(device, o.dtype)
    progress = ctx.progress(f"rlhf {kind} · {source.short} · --method {o.method} · reward {reward_name}")
    loaded = load_policy(kind, o, source, device)
    if hasattr(reward, "check_readable"):
        reward.check_readable(prompts[:16], reward_name)
    signal = watch_reward(kind, o, progress, loaded, reward, reward_name, prompts)
    if o.probe_reward:
        return probe_only(kind, signal, source, device, progress)
    peft_config = None if o.method == "full" else policy_adapter_config(o, loaded.model, source, o.steps)

    def reward_fn(prompts, completions, **_):
        return call_reward(reward, list(prompts), list(completions), reward_name).tolist()
    reward_fn.__name__ = "reward"
    callback = ProgressCallback(progress, signal)
    trainer = build_trl_trainer(lambda: online_trainer(kind, o, loaded.model, reward_fn, prompts, loaded.tokenizer,
                                                       peft_config, callback,
                                                       trl_common(o, device, ctx.run_dir / "trl", dtype)))
    plan = trainable.report(trainer.model, o.method + (f" r={o.r}" if o.method != "full" else ""))
    describe_run(ctx, progress, plan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    status = "stopped" if callback.stopped else "ok"
    rewards = [log["reward"] for log in callback.logs if "reward" in log]
    metrics: dict[str, float] = {"steps": int(trainer.state.global_step)}
    if rewards:
        k = min(3, len(rewards))
        metrics.update(reward_first3=float(sum(rewards[:k]) / k), reward_last3=float(sum(rewards[-k:]) / k))
        metrics["reward_gain"] = metrics["reward_last3"] - metrics["reward_first3"]
    kls = [log["kl"] for log in callback.logs if "kl" in log]
    if kls:
        metrics["kl_mean"] = float(sum(kls) / len(kls))
    policy = trainer.model.eval()
    from types import SimpleNamespace
    data = SimpleNamespace(fingerprint="")
    result = PreferenceResult.build(f"rlhf {kind}", o, source, loaded, policy, plan, status, metrics,
                                    callback.logs, data, ctx, device, signal.notes, name, autocast=dtype)
    hold(result)
    progress.end(status, **{k: v for k, v in metrics.items() if k.startswith("reward_")})
    return result


def build_trl_trainer(build):
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
