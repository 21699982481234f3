"""`%rlhf ppo`: our PPO (llm_magics/preference/ppo.py) against a reward Result or any Python callable, on the training
base (device, dtype, live view, Stop, the record); only its own choices here: the reference, the policy with its
value head, and our PPO loop as the `train` hook."""
from __future__ import annotations

import copy

from ...engine.rng import RunRng, seeded
from ...models import trainable
from ...training import Outcome
from .common import policy_adapter_config
from .trainers import PolicyRun, RewardedTraining


class PpoTraining(RewardedTraining):
    name, kind = "rlhf ppo", "ppo"

    def prepare(self, run: PolicyRun) -> None:
        from ...preference.ppo import PolicyWithValue
        if not self.load(run):
            return
        o, model = run.options, run.loaded.model
        # The adapter's and the value head's initialisation draw from the run's seed, not the global generator.
        with seeded(o.seed):
            if o.method == "full":
                run.reference = copy.deepcopy(model).eval().requires_grad_(False)
                run.plan = trainable.apply(model, "all")
            else:
                from peft import get_peft_model
                model.requires_grad_(False)
                config = policy_adapter_config(o, model, run.source, o.steps, dropout=0.0)
                model = get_peft_model(model, config, adapter_name=run.ctx.run_id)
                run.plan = trainable.report(model, self.plan_label(o))
            run.model = PolicyWithValue(model, run.tokenizer, run.reference, o.temperature, run.autocast)

    def train(self, run: PolicyRun) -> Outcome:
        from ...preference.ppo import PpoConfig, PpoTrainer
        o = run.options
        config = PpoConfig(steps=o.steps, batch_size=o.batch_size, minibatch_size=o.minibatch_size,
                           ppo_epochs=o.ppo_epochs, lr=self.peak_lr(o), max_new_tokens=o.max_new_tokens,
                           temperature=o.temperature, kl=o.kl, target_kl=o.target_kl, kl_horizon=o.kl_horizon,
                           gamma=o.gamma, lam=o.lam, clip=o.clip, vf_clip=o.vf_clip, vf_coef=o.vf_coef,
                           whiten=o.whiten, reward_norm=o.reward_norm, no_eos_penalty=o.no_eos_penalty,
                           max_grad_norm=o.max_grad_norm or None, seed=o.seed, stop_kl=o.stop_kl)
        run.trainer = PpoTrainer(run.model, run.reward, run.reward_name, run.data.texts, config, run.progress,
                                 run_rng=RunRng(o.seed, run.device), signal=run.signal)
        run.progress.start(total=o.steps, unit="steps")
        status = run.trainer.train()
        return Outcome(status, steps=len(run.trainer.history))

    def build_result(self, run: PolicyRun, outcome: Outcome):
        from .results import PpoResult
        result = PpoResult.from_trainer(run.trainer, outcome.status, run.options, run.source, run.loaded, run.plan,
                                        run.ctx, run.device)
        result.notes.extend(run.signal.notes)
        return result

    def end_metrics(self, result) -> dict[str, float]:
        return {"reward": result.metrics.get("reward_last3", float("nan")),
                "kl": result.metrics.get("kl_mean", float("nan"))}
