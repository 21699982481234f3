"""The options of every %rlhf command, and the checks they share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ... import options as opts
from ...adapters.configs import PROMPT_LEARNING, TUNERS
from ...common_options import (BackgroundOptions, BatchOptions, ComputeOptions, EvaluationOptions, LaunchOptions,
                               ModelOptions, OptimizerOptions, ResumeOptions, RunOptions, SeedOptions)
from ...common_options import file_path, plain_name
from ...engine.features import POOLINGS
from ...errors import UsageError
from ...options import option, positive
from ...preference.signal import NO_SIGNAL_STEPS

REWARD_TRAIN = ("full", "head") + TUNERS
DEFAULT_REWARD_LR = {"full": 5e-5, "head": 1e-3, "tuner": 1e-3}


def _reward_train(value) -> str | None:
    if value in PROMPT_LEARNING:
        return (f"{value} learns virtual tokens, which a reward model cannot train well; use full, head or a "
                f"tuner ({', '.join(TUNERS)})")
    if value not in REWARD_TRAIN:
        return f"{value!r} is not full, head or a PEFT method ({', '.join(TUNERS)})"
    return None


@dataclass
class OneProcessOptions:
    """--devices on a command that runs in one process: declared so that asking for more is refused in one
    line naming the commands that take it (rather than read as a misspelt --device)."""
    devices: int = option(1, "processes: this command runs in one (--devices above 1 is for %rlhf reward, dpo, "
                             "kto and orpo)", check=positive)


@dataclass
class PreferenceOptions(SeedOptions):
    data: Any = option(None, "preference pairs: a variable, a file (jsonl, json, csv, parquet, .jsonl.gz) or a "
                             "dataset name; prompt/chosen/rejected, chat lists, HH transcripts, ShareGPT or "
                             "ranked lists", metavar="DATA")
    validation: Any = option(None, "validation pairs (default: split off --data)", metavar="DATA")
    test: Any = option(None, "held-out pairs (default: split off --data)", metavar="DATA")
    prompt: str | None = option(None, "the prompt column (default: prompt, question, instruction, …)",
                                metavar="COLUMN")
    chosen: str | None = option(None, "the preferred answer's column (default: chosen)", metavar="COLUMN")
    rejected: str | None = option(None, "the other answer's column (default: rejected)", metavar="COLUMN")
    seed: int = option(0, "seed for splits, sampling and initialisation (0 … 2**32-1)", check=opts.seed)
    val_size: float = option(0.1, "share of --data held out for validation", check=opts.fraction)
    test_size: float = option(0.2, "share of --data held out for testing when --test is not given",
                              check=opts.fraction)
    max_rows: int | None = option(None, "use at most this many training pairs (seeded sample)", check=positive)


@dataclass
class _Policy:
    policy: str | None = option(None, "the causal LM to tune: an alias (smollm2), a local folder or a hub id "
                                      "(default: the configured default model)")


@dataclass
class PolicyOptions(ComputeOptions, _Policy):
    """The causal LM a policy command tunes (`--policy`), and where and in what it runs."""


@dataclass
class RewardOptions(ModelOptions, PreferenceOptions, RunOptions, LaunchOptions, BackgroundOptions, ResumeOptions,
                    EvaluationOptions, OptimizerOptions, BatchOptions):
    """What `%rlhf reward` reads: the engine's loop, --resume included (it checkpoints at each evaluation)."""
    epochs: int = option(1, "passes over the training pairs", check=positive)
    batch_size: int = option(8, "pairs per batch (each pair is two rows)", check=positive)
    train: str = option("full", "what trains: full, head (the scoring layer only) or a PEFT tuner "
                                f"({', '.join(TUNERS)})", check=_reward_train, metavar="WHAT")
    pooling: str = option("auto", "how token states become one vector (auto: mean for encoders, last token for "
                                  "decoders)", choices=("auto",) + POOLINGS)
    r: int = option(8, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.05, "tuner dropout", check=opts.non_negative)
    target: list[str] = option(["all-linear"], "tuner: layers to adapt (all-linear or names)", metavar="NAMES")

    def peak_lr(self) -> float:
        return self.lr or DEFAULT_REWARD_LR[self.train if self.train in ("full", "head") else "tuner"]



def _kl_coef(value) -> str | None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        return f"is a KL coefficient: a finite number ≥ 0, got {value}"
    return None


def _policy_method(value) -> str | None:
    if value in PROMPT_LEARNING:
        return f"{value} learns virtual tokens; PPO here trains full or a tuner ({', '.join(TUNERS)})"
    if value not in ("full",) + TUNERS:
        return f"{value!r} is not full or a PEFT method ({', '.join(TUNERS)})"
    return None


@dataclass
class RewardSignalOptions:
    """What ppo, grpo and rloo share about the reward's signal (llm_magics/preference/signal.py)."""
    stop_no_signal: int | None = option(None, "end the run (status stopped) after this many steps in a row in which "
                                              "the reward gave no signal: one value for every rollout (grpo/rloo: "
                                              "within every prompt's group). The live view and the Result say so "
                                              f"after {NO_SIGNAL_STEPS} such steps either way (default: never stop)",
                                        check=positive)
    probe_reward: bool = option(False, "only look: score one batch of rollouts of the policy as loaded and return "
                                       "them with their rewards as a table (no training)")


@dataclass
class PpoOptions(PolicyOptions, RunOptions, OneProcessOptions, BackgroundOptions, RewardSignalOptions,
                 SeedOptions):
    reward: Any = option(None, "a reward: a %rlhf reward Result variable, its run id or folder, or any Python "
                               "callable(prompts, completions) -> floats", metavar="REWARD")
    prompts: Any = option(None, "prompts to roll out from: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    steps: int = option(20, "PPO steps (a rollout batch and its updates each)", check=positive)
    batch_size: int = option(8, "rollouts per step", check=positive)
    minibatch_size: int = option(4, "rollouts per update", check=positive)
    ppo_epochs: int = option(4, "passes over each rollout batch", check=positive)
    lr: float | None = option(None, "peak learning rate (default: 1e-5 full, 1e-4 for a tuner)", check=positive)
    max_new_tokens: int = option(24, "tokens sampled per completion", check=opts.new_tokens)
    temperature: float = option(1.0, "sampling temperature (the log-probs use it too)", check=positive)
    kl: float = option(0.05, "KL penalty coefficient β (per token, against the reference)", check=_kl_coef)
    target_kl: float | None = option(None, "adaptive KL: move β towards this KL per sequence (nats)",
                                     check=positive)
    kl_horizon: int = option(10000, "adaptive KL's horizon (rollouts)", check=positive)
    stop_kl: float | None = option(None, "end a step's update epochs once a minibatch is this far (nats per token) "
                                         "from the policy that sampled the rollouts (default: never)", check=positive)
    gamma: float = option(1.0, "discount", check=opts.between(0, 1))
    lam: float = option(0.95, "GAE λ", check=opts.between(0, 1))
    clip: float = option(0.2, "policy ratio clip ε", check=positive)
    vf_clip: float = option(0.2, "value clip", check=positive)
    vf_coef: float = option(0.1, "value loss weight", check=opts.non_negative)
    whiten: bool = option(True, "whiten advantages over each batch")
    reward_norm: bool = option(False, "normalise scores with their running mean and std")
    no_eos_penalty: float | None = option(None, "score given to completions that never end (default: scored as "
                                                "they are)")
    method: str = option("full", "what trains: full, or a PEFT tuner (lora, dora, …): the reference is then the "
                                 "base with the adapter disabled", check=_policy_method, metavar="WHAT")
    r: int = option(8, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    target: list[str] = option(["all-linear"], "tuner: layers to adapt", metavar="NAMES")
    max_grad_norm: float = option(1.0, "clip the gradient norm (0: no clipping)", check=opts.non_negative)
    seed: int = option(0, "seed for sampling and initialisation (0 … 2**32-1)", check=opts.seed)

    def validate(self) -> None:
        if None not in (self.minibatch_size, self.batch_size) and self.minibatch_size > self.batch_size:
            raise UsageError(f"--minibatch-size {self.minibatch_size} is above --batch-size {self.batch_size}: an "
                             "update takes a share of one step's rollouts")

    def peak_lr(self) -> float:
        return self.lr or (1e-5 if self.method == "full" else 1e-4)


@dataclass
class DpoOptions(PolicyOptions, PreferenceOptions, RunOptions, LaunchOptions, BackgroundOptions, ResumeOptions,
                 OptimizerOptions, BatchOptions):
    """What `%rlhf dpo|kto|orpo` read: TRL's trainer takes the optimizer and batch options, and --resume (its
    own checkpoints, trainers.TrlTraining); no --eval-every or --patience: it does not evaluate during the run."""
    method: str = option("full", "what trains: full, or a PEFT tuner (lora, dora, …): the reference is then the "
                                 "base with the adapter disabled", check=_policy_method, metavar="WHAT")
    beta: float = option(0.1, "DPO's β: how far the policy may move from the reference", check=positive)
    sft_weight: float = option(0.0, "dpo: weight of a log-likelihood term on the chosen answers beside DPO's loss "
                                    "(RPO; TRL's loss_type sigmoid + sft): keeps the chosen answers from losing "
                                    "probability as DPO pushes the pair apart. 0: plain DPO", check=opts.non_negative)
    steps: int | None = option(None, "optimizer steps (default: --epochs over the pairs)", check=positive)
    epochs: int = option(1, "passes over the training pairs", check=positive)
    batch_size: int = option(4, "pairs per batch", check=positive)
    max_length: int = option(128, "tokens per prompt + answer (the prompt is cut from the left)", check=positive)
    r: int = option(16, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    # No --dropout: TRL's DPO, KTO and ORPO trainers turn every dropout off (disable_dropout), the tuner's too.
    target: list[str] = option(["all-linear"], "tuner: layers to adapt", metavar="NAMES")
    name: str | None = option(None, "with a tuner: the adapter's name in the session (default: the run id)",
                              check=plain_name)

    def peak_lr(self) -> float:
        return self.lr or (5e-6 if self.method == "full" else 5e-4)


@dataclass
class OnlineOptions(PolicyOptions, RunOptions, OneProcessOptions, BackgroundOptions, ResumeOptions, OptimizerOptions,
                    RewardSignalOptions, SeedOptions):
    """What `%rlhf grpo|rloo` read: TRL's trainer for --steps steps (no epochs, no --max-length: completions
    are --max-new-tokens long)."""
    reward: Any = option(None, "a %rlhf reward Result (variable, run id or folder) or a Python "
                               "callable(prompts, completions) -> floats", metavar="REWARD")
    prompts: Any = option(None, "prompts to sample from: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    steps: int = option(20, "optimizer steps", check=positive)
    batch_size: int = option(8, "completions per step (prompts × --num-generations)", check=positive)
    num_generations: int = option(4, "completions per prompt (the group GRPO/RLOO compare within)", check=positive)
    max_new_tokens: int = option(24, "tokens sampled per completion", check=opts.new_tokens)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    beta: float = option(0.0, "KL coefficient against the reference (0: none, TRL's default)", check=_kl_coef)
    method: str = option("full", "what trains: full, or a PEFT tuner (lora, dora, …)", check=_policy_method,
                         metavar="WHAT")
    r: int = option(16, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.0, "tuner dropout", check=opts.non_negative)
    target: list[str] = option(["all-linear"], "tuner: layers to adapt", metavar="NAMES")
    name: str | None = option(None, "with a tuner: the adapter's name in the session (default: the run id)",
                              check=plain_name)
    seed: int = option(0, "seed for sampling and initialisation (0 … 2**32-1)", check=opts.seed)

    def validate(self) -> None:
        if None in (self.batch_size, self.num_generations):
            return   # the Python API may leave one unset: the option checks answer for it
        if self.batch_size % self.num_generations:
            raise UsageError(f"--batch-size {self.batch_size} must be a multiple of --num-generations "
                             f"{self.num_generations} (whole groups per step)")
        if self.num_generations < 2:
            raise UsageError("--num-generations must be at least 2: GRPO/RLOO compare completions of one prompt")

    def peak_lr(self) -> float:
        return self.lr or (1e-5 if self.method == "full" else 1e-4)


@dataclass
class _EvalRun:
    run: Any = option(positional=True, help="the tuned policy: a %rlhf Result variable or its run id", metavar="RUN")


@dataclass
class EvalOptions(RunOptions, OneProcessOptions, _EvalRun):
    reward: Any = option(None, "the judge: a %rlhf reward Result (variable, run id or folder) or a "
                               "callable(prompts, completions) -> floats", metavar="REWARD")
    prompts: Any = option(None, "held-out prompts: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    max_new_tokens: int = option(24, "tokens sampled per completion", check=opts.new_tokens)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    batch_size: int = option(8, "prompts per generation batch", check=positive)
    samples: int = option(8, "sample pairs shown in the table", check=positive)
    seed: int = option(0, "seed for sampling")


@dataclass
class _CollectFile:
    path: str = option(positional=True, help="the JSONL file choices are appended to (resumed when it exists)",
                       metavar="FILE", check=file_path)


@dataclass
class CollectOptions(RunOptions, OneProcessOptions, _CollectFile):
    model: str | None = option(None, "the causal LM that writes the completions (alias, folder or hub id)")
    prompts: Any = option(None, "prompts to show: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    models: list[str] = option([], "compare these instead (comma-separated), one completion each, shown blind "
                                   "and shuffled: loaded adapters, %rlhf Results (variables or run ids) or causal "
                                   "LMs",
                               metavar="WHO")
    k: int = option(2, "completions per prompt, side by side", check=positive)
    max_new_tokens: int = option(64, "tokens per completion", check=opts.new_tokens)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    seed: int = option(0, "seed for sampling")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")

    def validate(self) -> None:
        if self.models and len({m if isinstance(m, str) else id(m) for m in self.models}) < 2:
            raise UsageError("--models needs at least two different models to compare (or drop it and use --k)")
        if self.models and self.model:
            raise UsageError("give --model (k samples from one model) or --models (one from each), not both")
        if self.k < 2:
            raise UsageError("--k must be at least 2: a choice needs two completions")


@dataclass
class ListOptions:
    limit: int | None = option(20, "how many recent runs", check=positive)

