"""Whether the reward gives the policy anything to learn from, and a look at it before training.

PPO whitens its advantages over a step's rollouts; GRPO and RLOO compare the completions of one prompt with
each other. A reward that is the same for every rollout (a rule such as "1.0 when the completion says
great" that the policy never happens to satisfy) leaves every advantage at zero: the run goes on, the KL
moves, and nothing is learnt. TRL's GRPO logs `frac_reward_zero_std` for this reason; `RewardSignal` is fed
each step's rewards (and which prompt each came from) and answers the step's spread, how many steps in a row
were flat, the one line that says so, and whether `--stop-no-signal` ends the run. `probe` scores one batch
of rollouts of the policy as loaded, before any update: a dry look the user can act on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# Flat steps in a row (the reward equal for every rollout, or for GRPO/RLOO within every prompt's group)
# before the live view and the Result say there is nothing to learn from. Four: one flat step is common
# early with a sparse reward; four in a row with the batch sizes used here rarely turn by themselves.
NO_SIGNAL_STEPS = 4

GROUPED = ("grpo", "rloo")    # commands whose advantages compare the completions of one prompt


def advice(command: str) -> str:
    """What the user can change, in the command's own option names."""
    more = "`--num-generations`, `--batch-size`" if command in GROUPED else "`--batch-size`"
    return (f"make the reward denser, sample more ({more}, `--temperature`, `--max-new-tokens`), "
            "or start from demonstrations")


def shown(value: float) -> str:
    return str(float(f"{value:.4g}"))


@dataclass
class Spread:
    """One batch's rewards: their mean and std across rollouts, the share of prompt groups whose rewards are
    all equal (GRPO/RLOO; None for PPO) and whether the batch gives no signal at all."""
    mean: float
    std: float
    zero_std_groups: float | None
    flat: bool
    low: float
    high: float
    rollouts: int

    @classmethod
    def of(cls, rewards: Sequence[float], groups: Sequence[int] | None = None) -> "Spread":
        values = np.asarray(rewards, dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0   # Bessel, as TRL's nanstd and torch.std
        zero = None
        if groups is not None:
            ids = np.asarray(groups)
            flat_groups = [np.isclose(np.ptp(values[ids == g]), 0.0) for g in np.unique(ids)]
            zero = float(np.mean(flat_groups))
        flat = zero == 1.0 if zero is not None else bool(np.isclose(std, 0.0))
        return cls(float(values.mean()), std, zero, flat, float(values.min()), float(values.max()), len(values))

    def line(self) -> str:
        text = f"mean {shown(self.mean)}, std {shown(self.std)} over {self.rollouts} rollouts"
        if self.zero_std_groups is not None:
            text += f", {self.zero_std_groups:.0%} of the prompt groups all equal"
        return text


class RewardSignal:
    """Fed each step's rewards (`observe`, or `recording` + `end_step` for TRL's reward calls); says when the
    reward has been flat for `threshold` steps in a row, in the live view (one line) and in `notes` (the
    Result's), and asks for the run to stop after `stop_after` flat steps (`--stop-no-signal`) unless that is
    the run's last step (`total`) anyway."""

    def __init__(self, command: str, progress=None, stop_after: int | None = None, group: int = 1,
                 total: int | None = None, threshold: int = NO_SIGNAL_STEPS):
        self.command, self.progress, self.stop_after, self.threshold = command, progress, stop_after, threshold
        self.total = total
        self.group = group if command in GROUPED else 1
        self.steps = 0
        self.streak: list[Spread] = []
        self.closed: list[str] = []     # notes of flat streaks that ended before the run did
        self.look: Probe | None = None   # the pre-training look (`probe`)
        self.looked: str | None = None  # and its line
        self.stopped_at: int | None = None
        self._pending: list[float] = []

    # -- fed by the training loops ------------------------------------------------------------------------
    def observe(self, rewards: Sequence[float], groups: Sequence[int] | None = None) -> Spread:
        """One step's rewards; `groups[i]`: the prompt group of rollout i (GRPO/RLOO)."""
        spread = Spread.of(rewards, groups)
        self.steps += 1
        if spread.flat:
            self.streak.append(spread)
            if len(self.streak) == self.threshold and not self.should_stop:
                self._say(self._streak_note())
            if self.should_stop:
                self.stopped_at = self.steps
                self._say(self.stop_note())
        else:
            if self._noted():
                self.closed.append(self._streak_note(ended=True))
            self.streak = []
        return spread

    def recording(self, reward_fn: Callable) -> Callable:
        """`reward_fn`, keeping what it returns for `end_step` (TRL calls it once per generation batch, a
        prompt's `group` completions next to each other)."""
        @functools.wraps(reward_fn)
        def recorded(*args, **kwargs):
            values = reward_fn(*args, **kwargs)
            self._pending.extend(float(v) for v in values)
            return values
        return recorded

    def end_step(self) -> bool:
        """Close a step on the rewards recorded since the last one; True when the run should stop."""
        if self._pending:
            rewards, self._pending = self._pending, []
            groups = np.arange(len(rewards)) // self.group if self.command in GROUPED else None
            self.observe(rewards, groups)
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return (self.stop_after is not None and len(self.streak) >= self.stop_after
                and (self.total is None or self.steps < self.total))

    # -- what it says --------------------------------------------------------------------------------------
    def _noted(self) -> bool:
        return len(self.streak) >= min(self.threshold, self.stop_after or self.threshold)

    def _streak_note(self, ended: bool = False) -> str:
        k, n = len(self.streak), sum(s.rollouts for s in self.streak)
        first = self.steps - k + (0 if ended else 1)
        where = f"steps {first}-{first + k - 1}" if ended else f"the last {k} step" + ("s" if k > 1 else "")
        low, high = min(s.low for s in self.streak), max(s.high for s in self.streak)
        if np.isclose(high - low, 0.0):
            said = f"the reward was {shown(low)} for all {n} rollouts of {where}"
        elif self.command in GROUPED:
            said = (f"each prompt's {self.group} completions all got the same reward in each of {where} ({n} rollouts; "
                    f"{self.command.upper()} learns from the differences within a prompt's group)")
        else:
            said = f"the reward was the same for every rollout of each of {where} ({n} rollouts)"
        return f"{said}: there is nothing to learn from; {advice(self.command)}"

    def stop_note(self) -> str:
        return f"stopped at step {self.stopped_at} (--stop-no-signal {self.stop_after}): {self._streak_note()}"

    @property
    def notes(self) -> list[str]:
        """The Result's notes: the pre-training look, each flat streak that was reported, the stop's reason."""
        out = ([self.looked] if self.looked else []) + list(self.closed)
        if self.stopped_at is not None:
            out.append(self.stop_note())
        elif self._noted():
            out.append(self._streak_note())
        return out

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.log(line)

    # -- the look before training ---------------------------------------------------------------------------
    def probe(self, model, tokenizer, reward: Callable, reward_name: str, prompts: Sequence[str], rollouts: int,
              max_new_tokens: int, temperature: float, seed: int) -> "Probe":
        """Score one batch of `rollouts` completions of `model` as it is (before any update), sampled as
        training samples them, from the run's seed on a generator of its own; say its mean and spread."""
        look = probe(model, tokenizer, reward, reward_name, prompts, rollouts, self.group, max_new_tokens,
                     temperature, seed)
        self.look = look
        self.looked = f"before training, the reward of the policy as loaded: {look.spread.line()}"
        if look.spread.flat:
            self.looked += f" — all equal, nothing to learn from as it stands; {advice(self.command)}"
        self._say(self.looked)
        return look


@dataclass
class Probe:
    samples: "pd.DataFrame"   # prompt, completion, reward
    spread: Spread

    def metrics(self) -> dict[str, float]:
        out = {"reward_mean": self.spread.mean, "reward_std": self.spread.std}
        if self.spread.zero_std_groups is not None:
            out["frac_reward_zero_std"] = self.spread.zero_std_groups
        return out


def probe(model, tokenizer, reward: Callable, reward_name: str, prompts: Sequence[str], rollouts: int, group: int,
          max_new_tokens: int, temperature: float, seed: int) -> Probe:
    """`rollouts` completions of `model` for seeded picks of `prompts` (`group` completions each), scored."""
    import pandas as pd

    from ..engine.rng import RunRng, isolated
    from .ppo import PolicyWithValue, call_reward
    with isolated():   # the sampler's (unused) value head draws its init: no run's numbers, not the user's
        sampler = PolicyWithValue(model, tokenizer, reference=None, temperature=temperature)
    order = np.random.default_rng(seed).permutation(len(prompts))
    picks = [prompts[order[i % len(order)]] for i in range(max(1, rollouts // group))]
    batch = [p for p in picks for _ in range(group)]
    with RunRng(seed, sampler.device).active():
        roll = sampler.rollout(batch, max_new_tokens)
    scores = call_reward(reward, roll.prompts, roll.completions, reward_name).tolist()
    groups = np.arange(len(batch)) // group if group > 1 else None
    samples = pd.DataFrame({"prompt": roll.prompts, "completion": roll.completions, "reward": scores})
    return Probe(samples, Spread.of(scores, groups))
