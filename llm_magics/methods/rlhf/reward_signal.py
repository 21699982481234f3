"""`%rlhf ppo|grpo|rloo`: the look at the reward before training, `--probe-reward` (only that) and the tracker
that says when the reward gives no signal (llm_magics/preference/signal.py)."""
from __future__ import annotations

from ...method import Result
from ...preference.signal import RewardSignal


def watch_reward(kind: str, o, progress, loaded, reward, reward_name: str, prompts: list[str]) -> RewardSignal:
    """The run's tracker, after it has scored one batch of rollouts of the policy as loaded (and said so)."""
    signal = RewardSignal(kind, progress, o.stop_no_signal, group=getattr(o, "num_generations", 1), total=o.steps)
    signal.probe(loaded.model, loaded.tokenizer, reward, reward_name, prompts, o.batch_size, o.max_new_tokens,
                 o.temperature, o.seed)
    return signal


def probe_only(kind: str, signal: RewardSignal, source, device, progress) -> Result:
    """--probe-reward: the look's samples and rewards as the run's Result; nothing trained."""
    metrics = signal.look.metrics()
    result = Result(method=f"rlhf {kind}", model=source.short, metrics=metrics, status="ok", device=str(device),
                    tables={"samples": signal.look.samples},
                    notes=signal.notes + ["--probe-reward: the policy was not trained"])
    progress.end("ok", **metrics)
    return result
