"""RLHF for `%rlhf`: preference data, a reward model, and PPO of our own.

- `data`: preference data in any of the usual shapes → one table of prompt / chosen / rejected.
- `reward`: a Bradley–Terry reward model trained on our engine (full, head or LoRA).
- `ppo_core`: the PPO arithmetic (GAE, whitening, clipped losses, KL estimators, KL control),
  each piece small enough to check by hand; `ppo`: rollouts, the value head and the PPO loop.
- `trl_bridge`: DPO, KTO, ORPO, GRPO and RLOO through TRL with our data, devices, live view and Stop.
- `policy`: prompts, rewards (a Result or any callable) and the tuned policies' Results.
- `evaluate`: win rate of a tuned policy over its reference, and the KL between them.
- `collect`: the widget people rank completions with; every choice appended to a JSONL file.
"""
from .data import PreferenceData, normalize_preferences, prepare_preferences

__all__ = ["PreferenceData", "normalize_preferences", "prepare_preferences"]
