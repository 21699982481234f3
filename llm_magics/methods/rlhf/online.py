"""`%rlhf grpo|rloo`: a policy sampled from --prompts and scored by --reward (a reward Result or a Python
callable) through TRL's trainer, on the training base; only its own choices here: the reward as TRL calls it,
TRL's trainer, and the reward and KL metrics."""
from __future__ import annotations

import warnings

from ...training import Outcome
from .trainers import PolicyRun, RewardedTraining, TrlTraining


class OnlineTraining(RewardedTraining, TrlTraining):
    """GRPO or RLOO (`kind`) through TRL, against our reward."""

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"rlhf {kind}"

    def prepare(self, run: PolicyRun) -> None:
        if self.load(run):
            super().prepare(run)

    def build_trainer(self, run: PolicyRun, peft_config):
        from ...preference.ppo import call_reward
        from ...preference.trl_bridge import online_trainer

        def reward(prompts, completions, **_):
            return call_reward(run.reward, list(prompts), list(completions), run.reward_name).tolist()
        return online_trainer(self.kind, run.options, run.loaded.model, reward, run.data.texts, run.tokenizer,
                              peft_config, run.callback, self.trl_args(run))

    def train(self, run: PolicyRun) -> Outcome:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.train_trl(run)
        return self.trained(run)

    def build_result(self, run: PolicyRun, outcome: Outcome):
        from .results import PreferenceResult
        logs = run.callback.logs
        metrics: dict[str, float] = {"steps": outcome.steps}
        rewards = [log["reward"] for log in logs if "reward" in log]
        if rewards:
            k = min(3, len(rewards))
            metrics.update(reward_first3=float(sum(rewards[:k]) / k), reward_last3=float(sum(rewards[-k:]) / k))
            metrics["reward_gain"] = metrics["reward_last3"] - metrics["reward_first3"]
        kls = [log["kl"] for log in logs if "kl" in log]
        if kls:
            metrics["kl_mean"] = float(sum(kls) / len(kls))
        return PreferenceResult.build(self.name, run.options, run.source, run.loaded, run.trainer.model.eval(),
                                      run.plan, outcome.status, metrics, logs, run.data, run.ctx, run.device,
                                      run.signal.notes + run.notes, run.name, autocast=run.autocast)
