"""PPO for a causal LM against a reward model or any Python reward, as InstructGPT did it.

One step: sample completions for a batch of prompts (batched `generate` with the KV cache,
plain temperature sampling: no top-k/top-p, so the policy we score is the one we sampled
from), score them, compute per-token log-probs, values and reference log-probs in one pass
each, turn score and KL into per-token rewards, GAE, whiten the advantages, then several
epochs of minibatch updates with the clipped policy and value losses (`ppo_core`).

Choices, and where they come from:
- the value head is a linear layer on the policy's last hidden state, zero-initialised
  (TRL's old `AutoModelForCausalLMWithValueHead` shares the trunk the same way; zero init
  as in "The N Implementation Details of RLHF with PPO");
- the reference is the frozen initial policy; with a PEFT method it is the same model with the
  adapter disabled (one copy in memory, as TRL did with `peft`);
- log-probs are computed from logits divided by the sampling temperature, in the policy's and
  the reference's pass alike (a missing division is a classic source of negative KL);
- the response mask runs to the first EOS, found by position, not by `== pad` (SmolLM2 pads
  with its EOS id); a response without EOS can get a fixed penalty (N details: "EOS trick");
- dropout is off in every pass (the model stays in eval mode while it trains), and the first
  minibatch of every step replays the rollout's own chunking, so its ratio is exactly 1 and
  its KL to the rollout policy exactly 0 — checked in the tests;
- scores can be normalised with running moments (TRL's `use_score_norm`);
- the update epochs of a step stop early once a minibatch finds the policy more than
  `stop_kl` nats per token (k3, mean over real tokens) away from the rollout policy (OpenAI's
  baselines / Spinning Up PPO `target_kl`, old TRL's `early_stopping`): several epochs over
  only 8 rollouts otherwise keep pushing every sampled token of the few rewarded completions,
  and the KL to the reference grows with no reward behind it;
- randomness (sampling) comes from the run's own generator (`engine.rng.RunRng`): a run leaves
  the global generator alone, and two runs with one seed sample the same rollouts.

The loop is ours rather than `TrainLoop`'s (PPO alternates sampling and updates; there is no
fixed dataset of rows), but it uses the engine's optimizer set-up, the progress events and the
same clean stop: the Stop button or a kernel interrupt ends the run after the current step.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..engine.generation import generate_ids
from ..errors import UsageError
from . import ppo_core as core


@dataclass
class PpoConfig:
    steps: int = 20
    batch_size: int = 8            # rollouts per step
    minibatch_size: int = 4
    ppo_epochs: int = 4
    lr: float = 1e-5
    max_new_tokens: int = 24
    temperature: float = 1.0
    kl: float = 0.05
    target_kl: float | None = None  # adaptive KL control when set
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 0.1
    whiten: bool = True
    reward_norm: bool = False
    no_eos_penalty: float | None = None
    max_grad_norm: float | None = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    stop_kl: float | None = None   # end a step's update epochs past this KL to the rollout policy (per token)


class ValueHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def response_mask(response: torch.Tensor, eos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over real response tokens — up to and including the first EOS —, whether each row ended)."""
    if eos_id is None:
        return torch.ones_like(response, dtype=torch.float32), torch.zeros(response.shape[0], dtype=torch.bool)
    is_eos = (response == eos_id).long()
    seen_before = torch.cumsum(is_eos, dim=1) - is_eos
    return (seen_before == 0).float(), is_eos.sum(1) > 0


@dataclass
class Rollout:
    prompts: list[str]
    completions: list[str]
    input_ids: torch.Tensor        # [B, P + R] left-padded prompts, then responses
    attention_mask: torch.Tensor   # real prompt tokens and real response tokens
    mask: torch.Tensor             # [B, R] real response tokens
    prompt_len: int
    ended: torch.Tensor
    scores: torch.Tensor = field(default=None)


class PolicyWithValue:
    """The causal LM (maybe PEFT-wrapped), its value head and its frozen reference."""

    def __init__(self, model, tokenizer, reference=None, temperature: float = 1.0,
                 autocast: torch.dtype | None = None):
        self.model, self.tokenizer, self.temperature = model, tokenizer, temperature
        self.autocast = autocast     # the forward passes' dtype (engine.device.train_dtype); None: fp32
        self.reference = reference   # None: the adapter disabled is the reference
        hidden = model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config") \
            else model.config.hidden_size
        self.value_head = ValueHead(hidden).to(next(model.parameters()).device)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def computing(self):
        """Autocast to the run's dtype around a forward pass (the weights stay as they are)."""
        from ..engine.device import autocast_to
        return autocast_to(self.device, self.autocast)

    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], max_new_tokens: int) -> Rollout:
        tok = self.tokenizer
        self.model.eval()
        with self.computing():
            enc, out = generate_ids(self.model, tok, prompts, max_new_tokens, pad_token_id=self.pad_id,
                                    eos_token_id=self.eos_id, do_sample=True, temperature=self.temperature, top_k=0,
                                    top_p=1.0, min_new_tokens=1, use_cache=True, repetition_penalty=1.0)
        prompt_len = enc["input_ids"].shape[1]
        response = out[:, prompt_len:]
        mask, ended = response_mask(response, self.eos_id)
        attention = torch.cat([enc["attention_mask"], mask.to(enc["attention_mask"].dtype)], dim=1)
        texts = [tok.decode(row[:int(m.sum())].tolist(), skip_special_tokens=True)
                 for row, m in zip(response.cpu(), mask.cpu())]
        return Rollout(list(prompts), texts, out, attention, mask.cpu(), prompt_len, ended.cpu())

    def _logits_and_hidden(self, model, input_ids, attention_mask, prompt_len, hidden: bool):
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with self.computing():
            out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        output_hidden_states=hidden, use_cache=False)
        # Position t predicts token t + 1: the response's tokens come from positions P−1 … end−1.
        logits = out.logits[:, prompt_len - 1:-1].float() / self.temperature
        states = out.hidden_states[-1][:, prompt_len - 1:-1] if hidden else None
        return logits, states

    def logprobs_values(self, input_ids, attention_mask, prompt_len) -> tuple[torch.Tensor, torch.Tensor]:
        logits, states = self._logits_and_hidden(self.model, input_ids, attention_mask, prompt_len, True)
        targets = input_ids[:, prompt_len:]
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with self.computing():
            values = self.value_head(states)
        return logprobs, values.float()

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, prompt_len) -> torch.Tensor:
        if self.reference is not None:
            logits, _ = self._logits_and_hidden(self.reference, input_ids, attention_mask, prompt_len, False)
        else:
            with self.model.disable_adapter():
                logits, _ = self._logits_and_hidden(self.model, input_ids, attention_mask, prompt_len, False)
        targets = input_ids[:, prompt_len:]
        return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def call_reward(reward: Callable, prompts: list[str], completions: list[str], name: str) -> torch.Tensor:
    """The reward's floats for the completions; one UsageError naming the reward when they are wrong."""
    try:
        values = reward(prompts, completions)
    except UsageError:
        raise
    try:
        values = [float(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    except (TypeError, ValueError):
        raise UsageError(f"--reward {name} must return one number per completion; it returned "
                         f"{type(values).__name__}") from None
    if len(values) != len(completions):
        raise UsageError(f"--reward {name} returned {len(values)} values for {len(completions)} completions; "
                         "it must return one per completion")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise UsageError(f"--reward {name} returned {values[bad[0]]} (not a finite number) for completion {bad[0]}: "
                         f"{completions[bad[0]][:60]!r}")
    return torch.tensor(values, dtype=torch.float32)


@dataclass
class StepStats:
    step: int
    reward: float
    reward_std: float
    kl: float
    kl_k3: float
    kl_coef: float
    policy_loss: float
    value_loss: float
    clipfrac: float
    approx_kl: float
    first_ratio_max_dev: float      # |ρ − 1| on the first minibatch: exactly 0
    first_approx_kl: float          # KL to the rollout policy on the first minibatch: exactly 0
    updates: int                    # minibatch updates made (fewer than epochs × minibatches after an early stop)
    response_len: float
    ended: float
    samples: list[tuple[str, str, float]]


class PpoTrainer:
    def __init__(self, policy: PolicyWithValue, reward: Callable, reward_name: str, prompts: list[str],
                 config: PpoConfig, progress=None, on_step: Callable[[StepStats], None] | None = None,
                 run_rng=None, signal=None):
        from ..engine.rng import RunRng
        from ..engine.loop import TrainConfig, make_optimizer
        # The run's own generator: sampling draws from it, never from the user's global one.
        self.run_rng = run_rng if run_rng is not None else RunRng(config.seed, policy.device)
        self.policy, self.reward, self.reward_name = policy, reward, reward_name
        self.prompts, self.config, self.progress, self.on_step = list(prompts), config, progress, on_step
        self.signal = signal   # a signal.RewardSignal: says when the reward stops varying, maybe ends the run
        holder = nn.ModuleDict({"policy": policy.model, "value": policy.value_head})
        self.optimizer = make_optimizer(holder, TrainConfig(lr=config.lr, weight_decay=config.weight_decay),
                                        policy.device)
        self.kl_ctl = (core.AdaptiveKL(config.kl, config.target_kl, config.kl_horizon) if config.target_kl
                       else core.FixedKL(config.kl))
        self.moments = core.RunningMoments()
        self.rng = np.random.default_rng(config.seed)
        self.order: list[int] = []
        self.history: list[StepStats] = []
        self.tokens = 0
        self.seconds = 0.0

    def _next_prompts(self) -> list[str]:
        out = []
        while len(out) < self.config.batch_size:
            if not self.order:
                self.order = self.rng.permutation(len(self.prompts)).tolist()
            out.append(self.prompts[self.order.pop()])
        return out

    def _chunks(self, rows: np.ndarray) -> list[np.ndarray]:
        size = self.config.minibatch_size
        return [rows[i:i + size] for i in range(0, len(rows), size)]

    def step(self, number: int) -> StepStats:
        cfg, policy = self.config, self.policy
        started = time.perf_counter()
        prompts = self._next_prompts()
        with self.run_rng.active():
            roll = policy.rollout(prompts, cfg.max_new_tokens)
        scores = call_reward(self.reward, roll.prompts, roll.completions, self.reward_name)
        raw_scores = scores.clone()
        if self.signal is not None:
            self.signal.observe(raw_scores.tolist())
        if cfg.no_eos_penalty is not None:
            scores = torch.where(roll.ended, scores, torch.full_like(scores, cfg.no_eos_penalty))
        if cfg.reward_norm:
            self.moments.update(scores)
            scores = (scores - self.moments.mean) / self.moments.std
        ids, attention, prompt_len = roll.input_ids, roll.attention_mask, roll.prompt_len
        mask = roll.mask
        rows = np.arange(ids.shape[0])
        old_logprobs, old_values, ref_logprobs = [], [], []
        with torch.no_grad():  # the rollout's numbers, in the chunks the first minibatch will replay
            for chunk in self._chunks(rows):
                lp, v = policy.logprobs_values(ids[chunk], attention[chunk], prompt_len)
                old_logprobs.append(lp.cpu())
                old_values.append(v.cpu())
                ref_logprobs.append(policy.reference_logprobs(ids[chunk], attention[chunk], prompt_len).cpu())
        old_logprobs, old_values = torch.cat(old_logprobs), torch.cat(old_values)
        ref_logprobs = torch.cat(ref_logprobs)
        rewards, kl = core.token_rewards(scores, old_logprobs, ref_logprobs, mask, self.kl_ctl.value)
        advantages, returns = core.gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten:
            advantages = core.masked_whiten(advantages, mask)
        policy.model.eval()   # no dropout: the ratio compares like with like
        stats: list[dict[str, float]] = []
        first: dict[str, float] | None = None
        early_stop = False
        for epoch in range(cfg.ppo_epochs):
            if early_stop:
                break
            order = rows if epoch == 0 else self.rng.permutation(rows)
            for chunk in self._chunks(order):
                index = torch.as_tensor(chunk)
                lp, values = policy.logprobs_values(ids[chunk], attention[chunk], prompt_len)
                lp, values = lp.cpu(), values.cpu()
                p_loss, p_stats = core.policy_loss(lp, old_logprobs[index], advantages[index], mask[index], cfg.clip)
                v_loss, v_stats = core.value_loss(values, old_values[index], returns[index], mask[index], cfg.vf_clip)
                if cfg.stop_kl is not None and first is not None and p_stats["approx_kl"] > cfg.stop_kl:
                    early_stop = True   # this minibatch is already too far from the rollout policy: no update
                    break
                loss = p_loss + cfg.vf_coef * v_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO loss became {float(loss)} at step {number}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                record = {"policy_loss": float(p_loss.detach()), "value_loss": float(v_loss.detach()), **p_stats, **v_stats}
                if first is None:
                    first = record
                stats.append(record)
        seq_kl = kl.sum(1)
        k3 = (core.kl_k3(old_logprobs, ref_logprobs) * mask).sum(1)
        self.kl_ctl.update(float(seq_kl.mean()), len(rows))
        self.seconds += time.perf_counter() - started
        self.tokens += int(mask.sum())
        mean = lambda key: float(np.mean([s[key] for s in stats]))  # noqa: E731
        order = torch.argsort(raw_scores, descending=True).tolist()
        picks = [order[0], order[-1]] if len(order) > 1 else order
        result = StepStats(
            step=number, reward=float(raw_scores.mean()), reward_std=float(raw_scores.std()) if len(rows) > 1 else 0.0,
            kl=float(seq_kl.mean()), kl_k3=float(k3.mean()), kl_coef=float(self.kl_ctl.value),
            policy_loss=mean("policy_loss"), value_loss=mean("value_loss"), clipfrac=mean("clipfrac"),
            approx_kl=mean("approx_kl"),
            first_ratio_max_dev=max(abs(first["ratio_max"] - 1.0), abs(first["ratio_min"] - 1.0)),
            first_approx_kl=first["approx_kl"], updates=len(stats), response_len=float(mask.sum(1).mean()),
            ended=float(roll.ended.float().mean()),
            samples=[(roll.prompts[i], roll.completions[i], float(raw_scores[i])) for i in picks])
        return result

    def train(self) -> str:
        """Run the steps; 'ok', or 'stopped' when the Stop button / an interrupt asked."""
        from ..engine.fast_paths import fast_paths
        from ..engine.loop import _InterruptToStop
        progress = self.progress
        status = "ok"
        policy = self.policy
        with _InterruptToStop(progress) if progress is not None else _Null(), \
                fast_paths(policy.model, policy.device, policy.autocast):
            for number in range(1, self.config.steps + 1):
                stats = self.step(number)
                self.history.append(stats)
                if self.on_step:
                    self.on_step(stats)
                if progress is not None:
                    progress.advance(1, reward=stats.reward, kl=stats.kl, policy_loss=stats.policy_loss,
                                     value_loss=stats.value_loss)
                    progress.set(reward_std=stats.reward_std, kl_coef=stats.kl_coef, clipfrac=stats.clipfrac,
                                 updates=stats.updates,
                                 tokens_per_s=self.tokens / max(self.seconds, 1e-9))
                    if number == 1 or number % 5 == 0 or number == self.config.steps:
                        prompt, completion, score = stats.samples[0]
                        progress.log(f"step {number} best sample ({score:+.3g}): {(prompt + completion)[-160:]!r}")
                    if progress.should_stop and number < self.config.steps:
                        status = "stopped"
                        break
                if self.signal is not None and self.signal.should_stop:   # --stop-no-signal
                    status = "stopped"
                    break
        return status


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
