"""The worked example of docs/rlhf.md's "Sparse rewards": a rule reward the policy rarely meets gives PPO nothing
to learn from at 8 rollouts a step; the same rule with more rollouts, or a shaped version of it, does learn.

    python examples/rlhf_sparse_reward.py [SEED ...]      # the tiny llama of llm_magics.testing, CPU, ~1 min a seed

Measured (seeds 0 1 2) in docs/rlhf.md, "Sparse rewards".

Prints, per run: the look before training, the steps with no signal, the rule's rate in 128 fresh samples of the
tuned policy against the reference (`%rlhf eval`), and the KL.
"""
import sys
import tempfile
from pathlib import Path

from llm_magics import api
from llm_magics.testing import build_llama

PROMPTS = ["Review: the film was", "Review: this movie is", "Review: the acting felt", "Review: overall it was"]
WORD = "best"


def has_best(prompts, completions):
    """The sparse rule: 1 when the completion says "best" (the untrained tiny llama: ~2% of 8-token samples)."""
    return [float(WORD in c) for c in completions]


def closer_to_best(prompts, completions):
    """The same rule, shaped: credit for the longest start of "best" the completion contains (b, be, bes, best)."""
    def credit(text):
        return max(k for k in range(len(WORD) + 1) if WORD[:k] in text) / len(WORD)
    return [credit(c) for c in completions]


RUNS = {"the rule, 8 rollouts a step": dict(reward=has_best, batch_size=8, minibatch_size=4),
        "the rule, 64 rollouts a step": dict(reward=has_best, batch_size=64, minibatch_size=16),
        "the rule shaped, 8 rollouts a step": dict(reward=closer_to_best, batch_size=8, minibatch_size=4)}


def main(seeds):
    policy = build_llama(Path(tempfile.mkdtemp()) / "tiny-llama")
    for seed in seeds:
        for name, args in RUNS.items():
            result = api.rlhf.ppo(policy=str(policy), prompts=PROMPTS, steps=20, max_new_tokens=8, lr=1e-2, kl=0.05,
                                  stop_kl=0.03, seed=seed, **args)
            history = result.tables["history"]
            check = api.rlhf.eval(run=result, reward=has_best, prompts=PROMPTS * 32, max_new_tokens=8, seed=seed)
            flat = int((history["reward_std"] == 0).sum())
            print(f"seed {seed} · {name}: flat steps {flat}/20 · 'best' in {check.metrics['reference_reward']:.0%} "
                  f"of the reference's samples → {check.metrics['policy_reward']:.0%} of the tuned policy's · "
                  f"KL mean {result.metrics['kl_mean']:.2f}", flush=True)
            for note in result.notes:
                if "nothing to learn" in note or note.startswith("before training"):
                    print("    ", note[:150], flush=True)


if __name__ == "__main__":
    main([int(s) for s in sys.argv[1:]] or [0])
