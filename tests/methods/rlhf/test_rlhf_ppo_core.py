"""PPO's arithmetic against small cases computed by hand (numbers worked out in the comments)."""
import math

import pytest
import torch

from llm_magics.preference.ppo_core import (AdaptiveKL, RunningMoments, gae, kl_k1, kl_k3, masked_whiten, policy_loss,
                                      token_rewards, value_loss)

T = torch.tensor


def test_gae_matches_the_hand_recursion():
    # γ=1, λ=0.5: δ2 = 2 + 0 − 0 = 2 → A2 = 2; δ1 = 0 + 0 − 1 = −1 → A1 = −1 + 0.5·2 = 0;
    # δ0 = 1 + 1 − 0.5 = 1.5 → A0 = 1.5 + 0.5·0 = 1.5; returns = A + V.
    advantages, returns = gae(T([[1.0, 0.0, 2.0]]), T([[0.5, 1.0, 0.0]]), T([[1.0, 1.0, 1.0]]), gamma=1.0, lam=0.5)
    assert advantages.tolist() == [[1.5, 0.0, 2.0]]
    assert returns.tolist() == [[2.0, 1.0, 2.0]]


def test_gae_with_discount_gives_discounted_returns_when_lambda_is_one():
    # γ=0.9, λ=1: A1 = 1 − 0.5 = 0.5; A0 = 0 + 0.9·0.5 − 0.5 + 0.9·0.5 = 0.4; returns 0.9·1, 1.
    advantages, returns = gae(T([[0.0, 1.0]]), T([[0.5, 0.5]]), T([[1.0, 1.0]]), gamma=0.9, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([0.4, 0.5])
    assert returns[0].tolist() == pytest.approx([0.9, 1.0])


def test_gae_ignores_everything_after_the_last_real_token():
    # Only token 0 is real: A0 = 0.5 + γ·0 − 0.2 = 0.3 (the padded value 5 must not leak in).
    advantages, returns = gae(T([[0.5, 9.0, 9.0]]), T([[0.2, 5.0, 5.0]]), T([[1.0, 0.0, 0.0]]), gamma=1.0, lam=0.95)
    assert advantages[0].tolist() == pytest.approx([0.3, 0.0, 0.0])
    assert returns[0].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_whitening_uses_real_tokens_only_with_the_unbiased_variance():
    # mean 2, unbiased var (1 + 0 + 1) / 2 = 1 → (−1, 0, 1); the padding stays 0.
    out = masked_whiten(T([[1.0, 2.0], [3.0, 100.0]]), T([[1.0, 1.0], [1.0, 0.0]]))
    assert out.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    kept = masked_whiten(T([[1.0, 2.0, 3.0]]), T([[1.0, 1.0, 1.0]]), shift_mean=False)
    assert kept[0].tolist() == pytest.approx([1.0, 2.0, 3.0], abs=1e-6)


def test_clipped_policy_loss_by_hand():
    # A = (1, −1), ρ = (1.5, 0.5), ε = 0.2. Token 1: max(−1.5, −1.2) = −1.2; token 2: max(0.5, 0.8) = 0.8.
    old = T([[0.0, 0.0]])
    new = T([[math.log(1.5), math.log(0.5)]])
    loss, stats = policy_loss(new, old, T([[1.0, -1.0]]), T([[1.0, 1.0]]), clip=0.2)
    assert float(loss) == pytest.approx((-1.2 + 0.8) / 2)
    assert stats["clipfrac"] == 1.0 and stats["ratio_max"] == pytest.approx(1.5)
    # Inside the clip range the loss is −mean(A·ρ) and nothing is clipped.
    loss, stats = policy_loss(T([[math.log(1.1), math.log(0.9)]]), old, T([[2.0, 1.0]]), T([[1.0, 1.0]]))
    assert float(loss) == pytest.approx(-(2 * 1.1 + 0.9) / 2) and stats["clipfrac"] == 0.0


def test_policy_loss_at_the_rollout_policy_has_ratio_one_and_zero_kl():
    logprobs = torch.randn(3, 5)
    loss, stats = policy_loss(logprobs, logprobs.clone(), torch.randn(3, 5), torch.ones(3, 5))
    assert stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0 and stats["ratio_min"] == 1.0
    assert stats["approx_kl"] == 0.0 and stats["clipfrac"] == 0.0


def test_clipped_value_loss_by_hand():
    # V = (1, 0), V_old = (0.5, 0.5), R = (2, 0), ε = 0.2 → clipped V = (0.7, 0.3).
    # Token 1: max((1−2)², (0.7−2)²) = 1.69; token 2: max(0, 0.09) = 0.09; loss = 0.5·(1.69 + 0.09)/2.
    loss, stats = value_loss(T([[1.0, 0.0]]), T([[0.5, 0.5]]), T([[2.0, 0.0]]), T([[1.0, 1.0]]), clip=0.2)
    assert float(loss) == pytest.approx(0.445)
    assert stats["vf_clipfrac"] == 1.0


def test_kl_estimators_by_hand():
    assert float(kl_k1(T(-1.0), T(-2.0))) == 1.0
    # log r = −2 − (−1) = −1: k3 = e^−1 − 1 + 1 = 0.3679; never negative, 0 at equality.
    assert float(kl_k3(T(-1.0), T(-2.0))) == pytest.approx(math.exp(-1))
    assert float(kl_k3(T(-2.0), T(-1.0))) == pytest.approx(math.e - 2)
    assert float(kl_k3(T(-1.5), T(-1.5))) == 0.0


def test_token_rewards_put_the_score_on_the_last_real_token():
    # KL = (1, 0, ·), β = 0.1 → rewards (−0.1, 0 + 3, 0): the padded third token gets nothing.
    rewards, kl = token_rewards(T([3.0]), T([[-1.0, -1.0, -7.0]]), T([[-2.0, -1.0, -1.0]]), T([[1.0, 1.0, 0.0]]), 0.1)
    assert rewards[0].tolist() == pytest.approx([-0.1, 3.0, 0.0])
    assert kl[0].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_adaptive_kl_moves_towards_its_target_with_a_clipped_error():
    kl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    kl.update(12.0, 8)            # error clipped to 0.2: β·(1 + 0.2·8/10000)
    assert kl.value == pytest.approx(0.1 * 1.00016)
    kl.update(5.4, 100)           # error −0.1: β·(1 − 0.1·100/10000)
    assert kl.value == pytest.approx(0.1 * 1.00016 * 0.999)


def test_running_moments_match_the_whole_sample():
    values = torch.arange(10, dtype=torch.float32)
    moments = RunningMoments()
    moments.update(values[:3])
    moments.update(values[3:])
    assert moments.mean == pytest.approx(4.5) and moments.std == pytest.approx(float(values.std(unbiased=False)))
