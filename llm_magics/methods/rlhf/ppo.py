"""`%rlhf ppo`: our PPO (llm_magics/rlhf/ppo.py) against a reward Result or any Python callable."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...engine.device import train_dtype
from ...engine.rng import RunRng, seeded
from ...models import hold, resolve, trainable
from ...training import describe_run
from .common import load_policy, policy_adapter_config
from .options import PpoOptions
from .reward_signal import probe_only, watch_reward

if TYPE_CHECKING:
    from ...rlhf.policy import PpoResult


def run_ppo(o: PpoOptions, ctx) -> "PpoResult":
    from ...rlhf.ppo import PolicyWithValue, PpoConfig, PpoTrainer
    from ...rlhf.policy import PpoResult, load_prompts, resolve_reward
    device = ctx.device(o.device)
    autocast = train_dtype(device, o.dtype)
    source = resolve(o.policy)
    reward, reward_name = resolve_reward(o.reward, ctx.namespace)
    prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
    progress = ctx.progress(f"rlhf ppo · {source.short} · --method {o.method} · reward {reward_name}")
    loaded = load_policy("ppo", o, source, device)
    if hasattr(reward, "check_readable"):
        reward.check_readable(prompts[:16], reward_name)
    signal = watch_reward("ppo", o, progress, loaded, reward, reward_name, prompts)
    if o.probe_reward:
        return probe_only("ppo", signal, source, device, progress)
    model, reference = loaded.model, None
    # The adapter's and the value head's initialisation draw from the run's seed, not the global generator.
    with seeded(o.seed):
        if o.method == "full":
            import copy
            reference = copy.deepcopy(model).eval()
            for param in reference.parameters():
                param.requires_grad = False
            plan = trainable.apply(model, "all")
        else:
            from peft import get_peft_model
            for param in model.parameters():
                param.requires_grad = False
            config = policy_adapter_config(o, model, source, o.steps, dropout=0.0)
            model = get_peft_model(model, config, adapter_name=ctx.run_id)
            plan = trainable.report(model, f"{o.method} r={o.r}")
        policy = PolicyWithValue(model, loaded.tokenizer, reference, o.temperature, autocast)
    describe_run(ctx, progress, plan)
    config = PpoConfig(steps=o.steps, batch_size=o.batch_size, minibatch_size=o.minibatch_size,
                       ppo_epochs=o.ppo_epochs, lr=o.peak_lr(), max_new_tokens=o.max_new_tokens,
                       temperature=o.temperature, kl=o.kl, target_kl=o.target_kl, kl_horizon=o.kl_horizon,
                       gamma=o.gamma, lam=o.lam, clip=o.clip, vf_clip=o.vf_clip, vf_coef=o.vf_coef,
                       whiten=o.whiten, reward_norm=o.reward_norm, no_eos_penalty=o.no_eos_penalty,
                       max_grad_norm=o.max_grad_norm or None, seed=o.seed, stop_kl=o.stop_kl)
    trainer = PpoTrainer(policy, reward, reward_name, prompts, config, progress,
                         run_rng=RunRng(o.seed, device), signal=signal)
    progress.start(total=o.steps, unit="steps")
    status = trainer.train()
    result = PpoResult.from_trainer(trainer, status, o, source, loaded, plan, ctx, device)
    result.notes.extend(signal.notes)
    hold(result)
    progress.end(status, reward=result.metrics.get("reward_last3", float("nan")),
                 kl=result.metrics.get("kl_mean", float("nan")))
    return result
