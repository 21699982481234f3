"""The arithmetic of PPO for language models, small enough to check by hand.

Tensors are [batch, response tokens] with a 0/1 `mask` over the real response tokens (up to
and including the first EOS). Choices and where they come from:

- per-token reward = −β·KL_t, plus the sequence score on the last real token (Ziegler et al.
  2019, InstructGPT; TRL's old PPOTrainer `compute_rewards`);
- KL estimator: k1 = log π − log π_ref for the reward (unbiased, as InstructGPT and TRL use it);
  k3 = (r − 1) − log r with r = π_ref/π for reporting (Schulman's "Approximating KL", always ≥ 0,
  the one OpenRLHF offers as `k3`);
- GAE(γ, λ) over response tokens, the value after the last real token being 0 (Schulman et
  al. 2016; "The N Implementation Details of RLHF with PPO", detail on `lastgaelam`);
- advantages whitened over the batch's real tokens, values and returns not (N details: "whiten
  advantages", and TRL's `masked_whiten` with the unbiased variance);
- clipped surrogate policy loss and clipped value loss (max of clipped and unclipped, ×0.5),
  both averaged over real tokens (PPO paper; TRL/OpenAI's lm-human-preferences);
- adaptive KL coefficient: proportional control towards a target KL with the error clipped to
  ±0.2 (Ziegler et al. 2019, `AdaptiveKLController` in lm-human-preferences and old TRL);
- reward normalisation with running moments of the scores (TRL's `use_score_scaling/norm`).
"""
from __future__ import annotations

import math

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    centred = (values - mean) ** 2
    var = masked_mean(centred, mask)
    if unbiased:
        count = mask.sum()
        if count < 2:
            return torch.zeros((), dtype=values.dtype)
        var = var * count / (count - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x − mean) / std over the real tokens (mean added back unless `shift_mean`); 0 on padding."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """log π(a) − log π_ref(a): unbiased per sample, can be negative."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(r − 1) − log r with r = π_ref(a)/π(a): unbiased, never negative."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token rewards, per-token k1 KL): −β·KL everywhere, the score added on the last real token."""
    kl = kl_k1(logprobs, ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rows = torch.arange(rewards.shape[0])
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation over each row's real tokens."""
    rewards, values = rewards * mask, values * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    returns = advantages + values
    return advantages, returns * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate: mean over real tokens of max(−A·ρ, −A·clip(ρ, 1±ε)); and its statistics."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"ratio_mean": float(masked_mean(ratio, mask)),
                 "ratio_max": float((ratio * mask + (1 - mask) * 1.0).max()),
                 "ratio_min": float((ratio * mask + (1 - mask) * 1.0).min()),
                 "clipfrac": float(masked_mean((clipped > unclipped).to(ratio.dtype), mask)),
                 "approx_kl": float(masked_mean(kl_k3(logprobs, old_logprobs), mask))}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """0.5 · mean over real tokens of max((V − R)², (clip(V, V_old ± ε) − R)²)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": float(masked_mean(((clipped_values - returns) ** 2 > (values - returns) ** 2)
                                                  .to(values.dtype), mask))}
    return loss, stats


class FixedKL:
    def __init__(self, value: float):
        self.value = value

    def update(self, current: float, n_steps: int) -> None:
        pass


class AdaptiveKL:
    """β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)  (Ziegler et al. 2019)."""

    def __init__(self, value: float, target: float, horizon: int = 10000):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current: float, n_steps: int) -> None:
        error = min(max(current / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class RunningMoments:
    """Running mean and std of scores (Chan et al.'s parallel update), for reward normalisation."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, values: torch.Tensor) -> None:
        values = values.double()
        n = values.numel()
        batch_mean, batch_var = float(values.mean()), float(values.var(unbiased=False)) if n > 1 else 0.0
        delta, total = batch_mean - self.mean, self.count + n
        m2 = self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))
