"""`%rlhf`: preference data → a reward model → policy optimisation (PPO of our own).

    %rlhf reward --model minilm --data prefs.jsonl --test held_out --out rm
    rm.score(["\\n\\nHuman: hi\\n\\nAssistant: hello!"])
    %rlhf ppo --policy smollm2 --reward rm --prompts prompts_df --steps 200 --method lora --kl 0.05
    %rlhf ppo --policy smollm2 --reward my_python_fn --prompts prompts_df

`%rlhf` alone lists the recorded %rlhf runs. Every command records its run like `%finetune`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from .. import options as opts
from ..adapters.methods import PROMPT_LEARNING, TUNERS
from ..common_options import ModelOptions, RunOptions, TrainingOptions
from ..engine.device import dtype_name
from ..engine.features import POOLINGS, default_pooling
from ..engine.rng import seeded
from ..engine.training import TrainConfig, TrainLoop
from ..errors import UsageError
from ..method import Command, Method
from ..models import hold, load_model, resolve, trainable
from ..models.classifier import SequenceClassifier
from ..options import option, positive
from ..rlhf.data import prepare_preferences
from ..rlhf.reward import REWARD_FOLDER, PairTask, RewardResult, save_folder
from ..training import describe_run, plot_history

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
class PreferenceOptions:
    data: Any = option(None, "preference pairs: a variable, a file (jsonl, json, csv, parquet, .jsonl.gz) or a "
                             "dataset name; prompt/chosen/rejected, chat lists, HH transcripts, ShareGPT or "
                             "ranked lists", metavar="DATA")
    validation: Any = option(None, "validation pairs (default: split off --data)", metavar="DATA")
    test: Any = option(None, "held-out pairs (default: split off --data)", metavar="DATA")
    prompt: str | None = option(None, "the prompt column (default: prompt, question, instruction, …)",
                                metavar="COLUMN")
    chosen: str | None = option(None, "the preferred answer's column (default: chosen)", metavar="COLUMN")
    rejected: str | None = option(None, "the other answer's column (default: rejected)", metavar="COLUMN")
    seed: int = option(0, "seed for splits, sampling and initialisation")
    val_size: float = option(0.1, "share of --data held out for validation", check=opts.fraction)
    test_size: float = option(0.2, "share of --data held out for testing when --test is not given",
                              check=opts.fraction)
    max_rows: int | None = option(None, "use at most this many training pairs (seeded sample)", check=positive)


@dataclass
class RewardOptions(ModelOptions, PreferenceOptions, RunOptions, TrainingOptions):
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


def _autocast(device, dtype: str):
    """Mixed precision for training: bf16/fp16 on GPUs (the engine's rule); on CPU only when asked
    (--dtype bfloat16: native on CPUs with AVX512-BF16/AMX), fp32 otherwise."""
    from ..engine.device import pick_dtype
    if device.type == "cuda":
        return pick_dtype(device, dtype)
    return torch.bfloat16 if dtype == "bfloat16" else None


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
class PpoOptions(RunOptions):
    policy: str | None = option(None, "the causal LM to tune: an alias (smollm2), a local folder or a hub id "
                                      "(default: the configured default model)")
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
    max_new_tokens: int = option(24, "tokens sampled per completion", check=positive)
    temperature: float = option(1.0, "sampling temperature (the log-probs use it too)", check=positive)
    kl: float = option(0.05, "KL penalty coefficient β (per token, against the reference)", check=_kl_coef)
    target_kl: float | None = option(None, "adaptive KL: move β towards this KL per sequence (nats)",
                                     check=positive)
    kl_horizon: int = option(10000, "adaptive KL's horizon (rollouts)", check=positive)
    gamma: float = option(1.0, "discount", check=opts.non_negative)
    lam: float = option(0.95, "GAE λ", check=opts.non_negative)
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
    seed: int = option(0, "seed for sampling and initialisation")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    trust_remote_code: bool = option(False, "run the model repository's own code (only for authors you trust)")
    bg: bool = option(False, "run in the background and return a handle at once (its widget has a Stop button)")

    def peak_lr(self) -> float:
        return self.lr or (1e-5 if self.method == "full" else 1e-4)


@dataclass
class DpoOptions(PreferenceOptions, RunOptions, TrainingOptions):
    policy: str | None = option(None, "the causal LM to tune: an alias (smollm2), a local folder or a hub id")
    method: str = option("full", "what trains: full, or a PEFT tuner (lora, dora, …): the reference is then the "
                                 "base with the adapter disabled", check=_policy_method, metavar="WHAT")
    beta: float = option(0.1, "DPO's β: how far the policy may move from the reference", check=positive)
    steps: int | None = option(None, "optimizer steps (default: --epochs over the pairs)", check=positive)
    epochs: int = option(1, "passes over the training pairs", check=positive)
    batch_size: int = option(4, "pairs per batch", check=positive)
    max_length: int = option(128, "tokens per prompt + answer (the prompt is cut from the left)", check=positive)
    r: int = option(16, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.0, "tuner dropout", check=opts.non_negative)
    target: list[str] = option(["all-linear"], "tuner: layers to adapt", metavar="NAMES")
    name: str | None = option(None, "with a tuner: the adapter's name in the session (default: the run id)")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bf16 on GPUs that do it, fp32 on CPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "run the model repository's own code (only for authors you trust)")

    def peak_lr(self) -> float:
        return self.lr or (5e-6 if self.method == "full" else 5e-4)


@dataclass
class OnlineOptions(RunOptions, TrainingOptions):
    policy: str | None = option(None, "the causal LM to tune: an alias (smollm2), a local folder or a hub id")
    reward: Any = option(None, "a %rlhf reward Result (variable, run id or folder) or a Python "
                               "callable(prompts, completions) -> floats", metavar="REWARD")
    prompts: Any = option(None, "prompts to sample from: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    steps: int = option(20, "optimizer steps", check=positive)
    batch_size: int = option(8, "completions per step (prompts × --num-generations)", check=positive)
    num_generations: int = option(4, "completions per prompt (the group GRPO/RLOO compare within)", check=positive)
    max_new_tokens: int = option(24, "tokens sampled per completion", check=positive)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    beta: float = option(0.0, "KL coefficient against the reference (0: none, TRL's default)", check=_kl_coef)
    method: str = option("full", "what trains: full, or a PEFT tuner (lora, dora, …)", check=_policy_method,
                         metavar="WHAT")
    r: int = option(16, "tuner rank", check=positive)
    alpha: float | None = option(None, "tuner scaling numerator (default: 2 × r)", check=positive)
    dropout: float = option(0.0, "tuner dropout", check=opts.non_negative)
    target: list[str] = option(["all-linear"], "tuner: layers to adapt", metavar="NAMES")
    name: str | None = option(None, "with a tuner: the adapter's name in the session (default: the run id)")
    seed: int = option(0, "seed for sampling and initialisation")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto: bf16 on GPUs that do it, fp32 on CPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "run the model repository's own code (only for authors you trust)")

    def validate(self) -> None:
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
class EvalOptions(RunOptions, _EvalRun):
    reward: Any = option(None, "the judge: a %rlhf reward Result (variable, run id or folder) or a "
                               "callable(prompts, completions) -> floats", metavar="REWARD")
    prompts: Any = option(None, "held-out prompts: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    max_new_tokens: int = option(24, "tokens sampled per completion", check=positive)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    batch_size: int = option(8, "prompts per generation batch", check=positive)
    samples: int = option(8, "sample pairs shown in the table", check=positive)
    seed: int = option(0, "seed for sampling")


@dataclass
class _CollectFile:
    path: str = option(positional=True, help="the JSONL file choices are appended to (resumed when it exists)",
                       metavar="FILE")


@dataclass
class CollectOptions(RunOptions, _CollectFile):
    model: str | None = option(None, "the causal LM that writes the completions (alias, folder or hub id)")
    prompts: Any = option(None, "prompts to show: a variable, a file or a list of strings", metavar="DATA")
    prompt_column: str | None = option(None, "the prompt column (default: prompt, or the one text column)",
                                       metavar="COLUMN")
    k: int = option(2, "completions per prompt, side by side", check=positive)
    max_new_tokens: int = option(64, "tokens per completion", check=positive)
    temperature: float = option(1.0, "sampling temperature", check=positive)
    seed: int = option(0, "seed for sampling")
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")

    def validate(self) -> None:
        if self.k < 2:
            raise UsageError("--k must be at least 2: a choice needs two completions")


@dataclass
class ListOptions:
    limit: int | None = option(20, "how many recent runs", check=positive)


class RlhfMethod(Method):
    name = "rlhf"
    summary = ("RLHF: a reward model from preference pairs (Bradley–Terry, full, head or LoRA) and policy "
               "optimisation against it or any Python reward (PPO of our own, on the training engine).")
    Options = ListOptions
    commands = {
        "collect": Command(CollectOptions, "collect", "a widget to rank completions; choices go to a JSONL file",
                           records_run=False),
        "reward": Command(RewardOptions, "reward", "train a reward model on preference pairs"),
        "ppo": Command(PpoOptions, "ppo", "optimise a policy against a reward with PPO (ours, on the engine)"),
        "dpo": Command(DpoOptions, "dpo", "direct preference optimisation through TRL's DPOTrainer"),
        "kto": Command(DpoOptions, "kto", "KTO through TRL (each pair gives a desirable and an undesirable answer)"),
        "grpo": Command(OnlineOptions, "grpo", "GRPO through TRL, against our reward (a Result or a callable)"),
        "rloo": Command(OnlineOptions, "rloo", "RLOO through TRL, against our reward (a Result or a callable)"),
        "eval": Command(EvalOptions, "eval", "win rate of a tuned policy over its reference under a reward, and "
                                            "the KL between them, on held-out prompts"),
        "orpo": Command(DpoOptions, "orpo", "ORPO through TRL (no reference model; --beta is its λ)"),
    }

    def run(self, o: ListOptions, ctx) -> pd.DataFrame:
        frame = ctx.store.frame(limit=None)
        if len(frame) and "method" in frame:
            frame = frame[frame["method"].astype(str).str.startswith("rlhf")]
        return frame.head(o.limit) if o.limit else frame

    # ---- reward ---------------------------------------------------------------------------
    def reward(self, o: RewardOptions, ctx) -> RewardResult:
        device = ctx.device(o.device)
        source = resolve(o.model)
        data = prepare_preferences(o.data, o.validation, o.test, seed=o.seed, val_size=o.val_size,
                                   test_size=o.test_size, namespace=ctx.namespace, prompt=o.prompt,
                                   chosen=o.chosen, rejected=o.rejected)
        notes = list(data.notes)
        if o.max_rows and len(data.train) > o.max_rows:
            data.train = data.train.sample(o.max_rows, random_state=o.seed).reset_index(drop=True)
            notes.append(f"training on {o.max_rows} of the pairs (--max-rows, seed {o.seed})")
        progress = ctx.progress(f"rlhf reward · {source.short} · --train {o.train}")
        loaded = load_model(source, "base", device, torch.float32, fresh=True, trust_remote_code=o.trust_remote_code)
        pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
        with seeded(o.seed):  # the head's initialisation, drawn from this run's seed alone (engine/rng.py)
            model = SequenceClassifier(loaded.model, 1, pooling, dropout=0.0).to(device)
        model.head.float()
        task = PairTask(data, loaded.tokenizer, o.max_length, device)
        peft = None
        if o.train in ("full", "head"):
            plan = trainable.apply(model, "all" if o.train == "full" else "head")
        else:
            from peft import get_peft_model

            from ..adapters.kinds import AdapterSpec
            from ..adapters.methods import build_config
            steps = math.ceil(len(task.lengths) / o.batch_size / o.grad_accum) * o.epochs
            spec = AdapterSpec.from_options(o)
            spec = AdapterSpec(**{**spec.__dict__, "method": o.train})
            config = build_config(spec, model, None, steps, source.path, modules_to_save=["head"])
            with seeded(o.seed):  # the adapter's initialisation, likewise
                peft = get_peft_model(model, config)
            plan = trainable.report(peft, f"{o.train} r={o.r}")
        describe_run(ctx, progress, plan)
        config = TrainConfig(epochs=o.epochs, lr=o.peak_lr(), batch_size=o.batch_size, grad_accum=o.grad_accum,
                             max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                             scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                             best_metric="val_accuracy", greater_is_better=True, seed=o.seed,
                             autocast=_autocast(device, o.dtype))
        loop = TrainLoop(peft or model, task, config, progress, ctx.run_dir, device)
        outcome = loop.run()
        if peft is not None:
            model = peft.merge_and_unload()
        for param in model.parameters():
            param.requires_grad = False
        model.eval()
        metrics: dict[str, float] = {}
        if outcome.history:
            first = outcome.history[0]
            metrics.update({f"{k}_before": v for k, v in first.items() if k in ("val_accuracy", "val_margin")})
        metrics.update(task.split_scores(model, "val"))
        metrics.update(task.split_scores(model, "test"))
        steps = progress.state.history
        losses = [values["loss"] for _, values in steps if "loss" in values]
        if losses:
            metrics["train_loss"] = float(losses[-1])
        metrics["steps"] = outcome.steps
        folder = save_folder(model, loaded.tokenizer, ctx.run_dir / REWARD_FOLDER, o.max_length,
                             {"model": source.name, "run_id": ctx.run_id})
        history = pd.DataFrame(outcome.history)
        result = RewardResult(
            method="rlhf reward", model=source.short, metrics=metrics, data_fingerprint=data.fingerprint,
            trainable_params=plan.trainable, total_params=plan.total, device=str(device),
            dtype=dtype_name(next(model.parameters()).dtype), status=outcome.status,
            artifacts={"run_dir": str(ctx.run_dir), "reward_model": str(folder)},
            tables={"trainable parameters": plan.groups, **({"history": history} if len(history) else {})},
            figures={"training curves": plot_history(history, steps)} if len(history) else {},
            notes=notes + outcome.notes + plan.notes + [f"reload after a restart: load_reward({ctx.run_id!r})"],
            history=history, _model=model, _tokenizer=loaded.tokenizer, _max_length=o.max_length,
            _folder=str(folder))
        result.tokens_per_s, result.rows_per_s = outcome.tokens_per_s, outcome.rows_per_s
        hold(result)
        progress.end(outcome.status, **{k: v for k, v in metrics.items() if k.startswith("test_")})
        return result

    # ---- ppo ------------------------------------------------------------------------------
    def ppo(self, o: PpoOptions, ctx) -> "PpoResult":
        from ..rlhf.ppo import PolicyWithValue, PpoConfig, PpoTrainer
        from ..rlhf.policy import PpoResult, load_prompts, resolve_reward
        device = ctx.device(o.device)
        source = resolve(o.policy)
        reward, reward_name = resolve_reward(o.reward, ctx.namespace)
        prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
        progress = ctx.progress(f"rlhf ppo · {source.short} · --method {o.method} · reward {reward_name}")
        loaded = load_policy("ppo", o, source, device)
        if hasattr(reward, "check_readable"):
            reward.check_readable(prompts[:16], reward_name)
        torch.manual_seed(o.seed)
        model, reference = loaded.model, None
        if o.method == "full":
            import copy
            reference = copy.deepcopy(model).eval()
            for param in reference.parameters():
                param.requires_grad = False
            plan = trainable.apply(model, "all")
        else:
            from peft import get_peft_model
            for param in model.parameters():
                param.requires_grad = False
            config = policy_adapter_config(o, model, source, o.steps, dropout=0.0)
            model = get_peft_model(model, config, adapter_name=ctx.run_id)
            plan = trainable.report(model, f"{o.method} r={o.r}")
        policy = PolicyWithValue(model, loaded.tokenizer, reference, o.temperature)
        describe_run(ctx, progress, plan)
        config = PpoConfig(steps=o.steps, batch_size=o.batch_size, minibatch_size=o.minibatch_size,
                           ppo_epochs=o.ppo_epochs, lr=o.peak_lr(), max_new_tokens=o.max_new_tokens,
                           temperature=o.temperature, kl=o.kl, target_kl=o.target_kl, kl_horizon=o.kl_horizon,
                           gamma=o.gamma, lam=o.lam, clip=o.clip, vf_clip=o.vf_clip, vf_coef=o.vf_coef,
                           whiten=o.whiten, reward_norm=o.reward_norm, no_eos_penalty=o.no_eos_penalty,
                           max_grad_norm=o.max_grad_norm or None, seed=o.seed)
        trainer = PpoTrainer(policy, reward, reward_name, prompts, config, progress)
        progress.start(total=o.steps, unit="steps")
        status = trainer.train()
        result = PpoResult.from_trainer(trainer, status, o, source, loaded, plan, ctx, device)
        hold(result)
        progress.end(status, reward=result.metrics.get("reward_last3", float("nan")),
                     kl=result.metrics.get("kl_mean", float("nan")))
        return result

    # ---- dpo (TRL) --------------------------------------------------------------------------
    def dpo(self, o: DpoOptions, ctx) -> "PreferenceResult":
        return self._offline("dpo", o, ctx)

    def kto(self, o: DpoOptions, ctx) -> "PreferenceResult":
        return self._offline("kto", o, ctx)

    def orpo(self, o: DpoOptions, ctx) -> "PreferenceResult":
        return self._offline("orpo", o, ctx)

    def _offline(self, kind: str, o: DpoOptions, ctx) -> "PreferenceResult":
        """DPO, KTO or ORPO through TRL: the same data, devices, live view, Stop, adapters and metrics."""
        import contextlib
        import copy

        from ..engine.device import pick_dtype
        from ..rlhf.trl_bridge import ProgressCallback, implicit_rewards, trl_common
        from ..rlhf.policy import PreferenceResult
        device = ctx.device(o.device)
        source = resolve(o.policy)
        data = prepare_preferences(o.data, o.validation, o.test, seed=o.seed, val_size=o.val_size,
                                   test_size=o.test_size, namespace=ctx.namespace, prompt=o.prompt,
                                   chosen=o.chosen, rejected=o.rejected)
        notes = list(data.notes)
        if o.max_rows and len(data.train) > o.max_rows:
            data.train = data.train.sample(o.max_rows, random_state=o.seed).reset_index(drop=True)
            notes.append(f"training on {o.max_rows} of the pairs (--max-rows, seed {o.seed})")
        name = o.name or ctx.run_id
        if o.method != "full":
            from ..adapters import hub
            hub().check_free(name)
        dtype = pick_dtype(device, o.dtype) if device.type == "cuda" else torch.float32
        progress = ctx.progress(f"rlhf {kind} · {source.short} · --method {o.method} · β={o.beta}")
        loaded = load_policy(kind, o, source, device)
        tokenizer = loaded.tokenizer
        model, reference, peft_config = loaded.model, None, None
        if o.method == "full":   # DPO/KTO train against it; ORPO has none, but its metrics compare to it
            reference = copy.deepcopy(model).eval()
            for param in reference.parameters():
                param.requires_grad = False

            def reference_ctx():
                return contextlib.nullcontext(reference)
        else:
            peft_config = policy_adapter_config(o, model, source, o.steps or 100)
        test_frame = data.test if len(data.test) else data.validation
        from ..rlhf.trl_bridge import offline_trainer
        callback = ProgressCallback(progress)
        # (keep_end is deprecated upstream, and what HH-style pairs need: its warning is silenced)
        trainer = build_trl_trainer(lambda: offline_trainer(kind, o, model, reference, data, tokenizer, peft_config,
                                                            callback, trl_common(o, device, ctx.run_dir / "trl", dtype)))
        policy = trainer.model
        if o.method != "full":
            def reference_ctx():
                @contextlib.contextmanager
                def disabled():
                    with policy.disable_adapter():
                        yield policy
                return disabled()
        plan = trainable.report(policy, f"{o.method}" + (f" r={o.r}" if o.method != "full" else ""))
        describe_run(ctx, progress, plan)
        before = implicit_rewards(policy, reference_ctx, tokenizer, test_frame, o.beta, o.max_length, "test")
        trainer.train()
        status = "stopped" if callback.stopped else "ok"
        policy = trainer.model.eval()
        metrics = {f"{k}_before": v for k, v in before.items()}
        metrics.update(implicit_rewards(policy, reference_ctx, tokenizer, test_frame, o.beta, o.max_length, "test"))
        losses = [log["loss"] for log in callback.logs if "loss" in log]
        if losses:
            metrics["train_loss"] = float(losses[-1])
        metrics["steps"] = int(trainer.state.global_step)
        result = PreferenceResult.build(f"rlhf {kind}", o, source, loaded, policy, plan, status, metrics, callback.logs,
                                        data, ctx, device, notes, name)
        hold(result)
        progress.end(status, **{k: v for k, v in metrics.items() if k.startswith("test_") and "before" not in k})
        return result

    # ---- grpo / rloo (TRL, online) ----------------------------------------------------------
    def grpo(self, o: OnlineOptions, ctx) -> "PreferenceResult":
        return self._online("grpo", o, ctx)

    def rloo(self, o: OnlineOptions, ctx) -> "PreferenceResult":
        return self._online("rloo", o, ctx)

    def _online(self, kind: str, o: OnlineOptions, ctx) -> "PreferenceResult":
        import warnings

        from ..engine.device import pick_dtype
        from ..rlhf.policy import PreferenceResult, load_prompts, resolve_reward
        from ..rlhf.ppo import call_reward
        from ..rlhf.trl_bridge import ProgressCallback, online_trainer, trl_common
        device = ctx.device(o.device)
        source = resolve(o.policy)
        reward, reward_name = resolve_reward(o.reward, ctx.namespace)
        prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
        name = o.name or ctx.run_id
        if o.method != "full":
            from ..adapters import hub
            hub().check_free(name)
        dtype = pick_dtype(device, o.dtype) if device.type == "cuda" else torch.float32
        progress = ctx.progress(f"rlhf {kind} · {source.short} · --method {o.method} · reward {reward_name}")
        loaded = load_policy(kind, o, source, device)
        if hasattr(reward, "check_readable"):
            reward.check_readable(prompts[:16], reward_name)
        peft_config = None if o.method == "full" else policy_adapter_config(o, loaded.model, source, o.steps)

        def reward_fn(prompts, completions, **_):
            return call_reward(reward, list(prompts), list(completions), reward_name).tolist()
        reward_fn.__name__ = "reward"
        callback = ProgressCallback(progress)
        trainer = build_trl_trainer(lambda: online_trainer(kind, o, loaded.model, reward_fn, prompts, loaded.tokenizer,
                                                           peft_config, callback,
                                                           trl_common(o, device, ctx.run_dir / "trl", dtype)))
        plan = trainable.report(trainer.model, o.method + (f" r={o.r}" if o.method != "full" else ""))
        describe_run(ctx, progress, plan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        status = "stopped" if callback.stopped else "ok"
        rewards = [log["reward"] for log in callback.logs if "reward" in log]
        metrics: dict[str, float] = {"steps": int(trainer.state.global_step)}
        if rewards:
            k = min(3, len(rewards))
            metrics.update(reward_first3=float(sum(rewards[:k]) / k), reward_last3=float(sum(rewards[-k:]) / k))
            metrics["reward_gain"] = metrics["reward_last3"] - metrics["reward_first3"]
        kls = [log["kl"] for log in callback.logs if "kl" in log]
        if kls:
            metrics["kl_mean"] = float(sum(kls) / len(kls))
        policy = trainer.model.eval()
        from types import SimpleNamespace
        data = SimpleNamespace(fingerprint="")
        result = PreferenceResult.build(f"rlhf {kind}", o, source, loaded, policy, plan, status, metrics,
                                        callback.logs, data, ctx, device, [], name)
        hold(result)
        progress.end(status, **{k: v for k, v in metrics.items() if k.startswith("reward_")})
        return result

    # ---- eval -------------------------------------------------------------------------------
    def eval(self, o: EvalOptions, ctx):
        from ..method import Result
        from ..rlhf.evaluate import evaluate, policy_of
        from ..rlhf.policy import load_prompts, resolve_reward
        reward, reward_name = resolve_reward(o.reward, ctx.namespace)
        prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
        model, reference, tokenizer, base = policy_of(o.run, ctx.namespace, ctx.settings)
        progress = ctx.progress(f"rlhf eval · {base} · reward {reward_name}")
        progress.start(total=len(prompts), unit="prompts")
        metrics, table = evaluate(model, reference, tokenizer, reward, reward_name, prompts, o.max_new_tokens,
                                  o.temperature, o.batch_size, o.seed, o.samples)
        progress.advance(len(prompts))
        progress.end("ok", win_rate=metrics["win_rate"], kl=metrics["kl_mean"])
        return Result(method="rlhf eval", model=base, metrics=metrics, tables={"sample pairs": table},
                      notes=[f"win rate counts ties as half; KL in nats per completion (k1; k3 "
                             f"{metrics['kl_k3_mean']:.3g})"])

    # ---- collect ----------------------------------------------------------------------------
    def collect(self, o: CollectOptions, ctx):
        from pathlib import Path

        from ..rlhf.collect import CollectSession, sampler
        from ..rlhf.policy import load_prompts
        prompts = load_prompts(o.prompts, o.prompt_column, ctx.namespace)
        path = Path(o.path).expanduser()
        if path.suffix.lower() != ".jsonl":
            raise UsageError(f"{o.path}: choices are written as JSON lines; name a .jsonl file")
        loaded = load_model(resolve(o.model), "causal_lm", ctx.device(o.device), torch.float32)
        tok = loaded.tokenizer
        if tok.padding_side != "left":
            tok = copy_tokenizer_left(tok)
        session = CollectSession(path, prompts, sampler(loaded.model, tok, o.k, o.max_new_tokens, o.temperature,
                                                        o.seed))
        if o.out:
            ctx.display(session)
        return session


def copy_tokenizer_left(tokenizer):
    import copy
    tok = copy.copy(tokenizer)
    tok.padding_side = "left"
    return tok


def load_policy(kind: str, o, source, device):
    """The causal LM a policy command tunes, in fp32; an encoder is one UsageError."""
    from ..models import architecture_kind
    loaded = load_model(source, "causal_lm", device, torch.float32, fresh=True, trust_remote_code=o.trust_remote_code)
    if architecture_kind(loaded.model.config) != "decoder":
        raise UsageError(f"--policy {source.short} is not a causal LM; {kind.upper()} needs a decoder (e.g. smollm2)")
    return loaded


def policy_adapter_config(o, model, source, steps: int, dropout: float | None = None):
    """The PEFT config of `--method` (a `%lora` method) for a causal-LM policy."""
    from peft import TaskType

    from ..adapters.kinds import AdapterSpec
    from ..adapters.methods import build_config
    spec = AdapterSpec(method=o.method, task="sft", r=o.r, alpha=o.alpha,
                       dropout=o.dropout if dropout is None else dropout, target=tuple(o.target), seed=o.seed)
    return build_config(spec, model, TaskType.CAUSAL_LM, steps, source.path)


def build_trl_trainer(build):
    """A TRL trainer whose only progress display is our live view: datasets' bars off while TRL
    prepares the data, TRL's printer/tqdm callbacks removed, its deprecation chatter silenced."""
    import warnings

    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HfProgress
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = build()
    finally:
        if bars:
            datasets.enable_progress_bars()
    for extra in (PrinterCallback, HfProgress):
        trainer.remove_callback(extra)
    return trainer
