"""RLHF for `%rlhf`: preference data, a reward model, and PPO of our own.

- `data`: preference data in any of the usual shapes → one table of prompt / chosen / rejected.
- `reward`: a Bradley–Terry reward model trained on our engine (full, head or LoRA).
- `ppo_core`: the PPO arithmetic (GAE, whitening, clipped losses, KL estimators, KL control),
  each piece small enough to check by hand.
"""
from .data import PreferenceData, normalize_preferences, prepare_preferences

__all__ = ["PreferenceData", "normalize_preferences", "prepare_preferences"]
