"""The training base of the %rlhf policy commands: `PolicyTraining` (a causal LM tuned in full or through a
`%lora` tuner, on `llm_magics.training`) and `RewardedTraining` (ppo, grpo, rloo: sampled from --prompts, scored
by --reward). Each command's own module overrides only what makes it itself."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...common_options import run_to_resume
from ...engine import checkpoint
from ...errors import UsageError
from ...models import hold, trainable
from ...safe_io import verify_manifest
from ...training import TRAINING_RESUME_KEYS, Outcome, TrainingMethod, TrainingRun
from ...training.resume import check_resumable
from .common import load_policy, policy_adapter_config
from .reward_signal import probe_only, watch_reward


@dataclass
class PolicyRun(TrainingRun):
    """A policy run's state beside the base's: the adapter's name, the trainer (TRL's or our PPO's) with its
    callback, the reward and its tracker (ppo, grpo, rloo), the reference, and metrics measured outside the
    loop."""
    name: str = ""
    trainer: Any = None
    callback: Any = None
    reward: Any = None
    reward_name: str = ""
    signal: Any = None
    reference: Any = None        # a frozen copy of the policy, where the trainer needs one
    reference_lp: Any = None     # the reference's log-probs of the held-out pairs (dpo, kto, orpo)
    measured: dict[str, float] = field(default_factory=dict)


@dataclass
class Prompts:
    """What an online command trains from: prompts, no pairs (so no data fingerprint)."""
    texts: list[str]
    fingerprint: str = ""


class PolicyTraining(TrainingMethod):
    """A causal-LM policy tuned on the training base (`--policy`; full or a `%lora` tuner named by --name)."""
    task = "sft"
    model_option = "policy"
    run_class = PolicyRun
    kind = ""   # the %rlhf command: ppo, dpo, …

    def peak_lr(self, o) -> float:
        return o.peak_lr()   # each command's default, declared with its options

    def plan_label(self, o) -> str:
        return o.method + (f" r={o.r}" if o.method != "full" else "")

    def check(self, run) -> None:
        """The adapter's name (--name, or the run id) must be free in the session, before anything loads."""
        run.name = run.options.name if getattr(run.options, "name", None) else run.ctx.run_id
        if run.options.method != "full":
            from ...adapters import hub
            hub().check_free(run.name)   # the adapter's name in the session, before anything loads

    def load_policy(self, run) -> None:
        """The policy (`common.load_policy`; under an adapter its frozen base loads as %lora's) and what its
        passes compute in (the base's `load_dtype` and `loaded_in`)."""
        o = run.options
        run.loaded = load_policy(self.kind, o, run.source, run.device, self.load_dtype(run, frozen=o.method != "full"))
        self.loaded_in(run, run.loaded.dtype)

    def finish(self, run, result) -> None:
        hold(result)


class RewardedTraining(PolicyTraining):
    """ppo, grpo, rloo: a policy sampled from --prompts and scored by --reward, which is looked at before
    training (`--probe-reward`: only that)."""

    def title(self, o, source) -> str:
        return f"{self.name} · {source.short} · --method {o.method} · reward {reward_label(o.reward)}"

    def prepare_data(self, run) -> None:
        from ...preference.policy import load_prompts
        from .results import resolve_reward
        o = run.options
        run.reward, run.reward_name = resolve_reward(o.reward, run.ctx.namespace)
        run.data = Prompts(load_prompts(o.prompts, o.prompt_column, run.ctx.namespace))

    def load(self, run) -> bool:
        """Load the policy and look at the reward; False when that look was all the user asked for."""
        kind, o, prompts = self.kind, run.options, run.data.texts
        self.load_policy(run)
        run.model, run.tokenizer = run.loaded.model, run.loaded.tokenizer
        if hasattr(run.reward, "check_readable"):
            run.reward.check_readable(prompts[:16], run.reward_name)
        run.signal = watch_reward(kind, o, run.progress, run.loaded, run.reward, run.reward_name, prompts)
        if o.probe_reward:
            run.answer = probe_only(kind, run.signal, run.source, run.device, run.progress)
        return not o.probe_reward

    def end_metrics(self, result) -> dict[str, float]:
        return {k: v for k, v in result.metrics.items() if k.startswith("reward_")}


def reward_label(ref) -> str:
    """How the live view names --reward: its variable name, run id or folder, or the callable's name
    (as `results.resolve_reward` names it)."""
    return ref if isinstance(ref, str) else getattr(ref, "__name__", type(ref).__name__)


class TrlTraining(PolicyTraining):
    """A policy command whose `train` hook is a TRL trainer, built in `prepare` by `build_trainer` with our
    live view as its callback (TRL's own bars and printers off). `--resume` continues from TRL's own checkpoint
    (trl_bridge.py writes and seals them in the run's `trl` folder), checked against the run's options and data
    as our loop's are."""
    resume_keys = TRAINING_RESUME_KEYS + ("policy", "method", "r", "alpha", "dropout", "target", "beta", "sft_weight",
                                          "steps", "max_rows", "num_generations", "max_new_tokens", "temperature")

    def resume_values(self, o) -> dict[str, Any]:
        return {**super().resume_values(o), "command": self.kind}   # a dpo run is not continued as kto

    def start(self, o, ctx) -> PolicyRun:
        """The base's start, with TRL's checkpoint found here (the base's lookup knows our loop's alone)."""
        spec = getattr(o, "resume", None)
        found = trl_checkpoint(spec, ctx, self.kind) if spec else None   # refused before anything loads
        run = super().start(replace(o, resume=None) if spec else o, ctx)
        run.options, run.resume_dir = o, found
        if found is not None:
            check_resumable(found.parent, self.resume_values(o), run.data.fingerprint)
        return run

    def train_trl(self, run: PolicyRun) -> None:
        """TRL's loop, from the checkpoint --resume found (its weights, optimizer, schedule, RNG and position);
        inside the engine's fast paths as our own loop (cheaper dropout masks on a CPU, no fp32 round trip into
        the adapters under autocast)."""
        import logging

        from ...engine.batching import few_training_shapes
        from ...engine.fast_paths import fast_paths
        compared = logging.getLogger("transformers.trainer_utils")   # it warns that save_steps' share (SAVE_EVERY)
        level = compared.level                                       # was saved as the step count it came to
        compared.setLevel(logging.ERROR)
        try:
            model = run.trainer.model
            with fast_paths(model, run.device, run.autocast), \
                    few_training_shapes(model, run.device, run.autocast, self.longest_row(run.options)):
                run.trainer.train(resume_from_checkpoint=str(run.resume_dir) if run.resume_dir else None)
        finally:
            compared.setLevel(level)

    def longest_row(self, o) -> int:
        """The longest batch row our code pads in this command's TRL loop (`batching.few_training_shapes`);
        0: TRL's own collators pad every batch, none of ours."""
        return 0

    def build_trainer(self, run: PolicyRun, peft_config):   # pragma: no cover - each command's own
        raise NotImplementedError

    def adapter_steps(self, o) -> int:
        """The steps the adapter's config plans for (a schedule some tuners read)."""
        return o.steps

    def prepare(self, run: PolicyRun) -> None:
        from ...preference.trl_bridge import ProgressCallback, quiet_trainer
        o = run.options
        if run.loaded is None:
            self.load_policy(run)
        run.tokenizer = run.loaded.tokenizer
        peft_config = None if o.method == "full" else \
            policy_adapter_config(o, run.loaded.model, run.source, self.adapter_steps(o))
        run.callback = ProgressCallback(run.progress, run.signal)
        run.trainer = quiet_trainer(lambda: self.build_trainer(run, peft_config))
        run.model = run.trainer.model
        run.plan = trainable.report(run.model, self.plan_label(o))

    def trl_args(self, run: PolicyRun, world: int = 1) -> dict[str, Any]:
        from ...preference.trl_bridge import trl_common
        return trl_common(run.options, run.device, run.ctx.run_dir / "trl", run.autocast, world)

    def trained(self, run: PolicyRun) -> Outcome:
        """What TRL's run came to: stopped or not, its train losses, its steps. An ended run drops its
        checkpoints; a stopped one keeps its last for --resume. The checkpoint it resumed is marked continued."""
        from ...preference.trl_bridge import drop_checkpoints
        state, folder = run.trainer.state, Path(run.trainer.args.output_dir)
        losses = [(log["step"], log["loss"]) for log in run.callback.logs if "loss" in log]
        status = "stopped" if run.callback.stopped else "ok"
        if status == "ok":
            drop_checkpoints(folder)
        else:
            run.notes.append(f"stopped at step {state.global_step} of {state.max_steps}: --resume "
                             f"{run.ctx.run_id} continues from its checkpoint")
        if run.resume_dir is not None:   # resumed once: TRL's optimizer state (2× the weights) goes, as ours does
            (run.resume_dir / "optimizer.pt").unlink(missing_ok=True)
            checkpoint.mark_continued(run.resume_dir, run.ctx.run_id)
            run.notes.append(f"resumed from {run.resume_dir.parent.parent.name} at its step "
                             f"{run.resume_dir.name.split('-')[-1]}")
        return Outcome(status, losses=losses, steps=int(state.global_step))


def trl_checkpoint(spec: str, ctx, kind: str) -> Path:
    """The sealed TRL checkpoint `--resume spec` names (a run id, or `last`: the newest of this command's
    stopped or crashed runs), not yet continued; else one UsageError line."""
    from ...preference.trl_bridge import last_sealed_checkpoint, trl_checkpoints
    runs = ctx.settings.subdir("runs")
    if spec == "last":
        found = [c for run in runs.glob(f"{ctx.method}-*") if (c := last_sealed_checkpoint(run / "trl")) is not None
                 and checkpoint.continued_by(c) is None and saved_command(run) == kind]
        if not found:
            raise UsageError(f"--resume last: no stopped or crashed %rlhf {kind} run has a checkpoint to resume")
        return max(found, key=lambda c: c.stat().st_mtime)
    problem = run_to_resume(spec)   # the option's check, again for callers that skip the parser
    if problem or not (runs / spec).resolve().is_relative_to(runs.resolve()):
        raise UsageError(f"--resume: {problem or f'{spec!r} leads out of the runs folder; name a run id'}")
    found = last_sealed_checkpoint(runs / spec / "trl")
    if found is None:
        damaged = [f"{c}: {verify_manifest(c, required=True)[0]}" for c in trl_checkpoints(runs / spec / "trl")]
        raise UsageError(f"--resume {spec}: " + (f"damaged checkpoint {damaged[-1]}; start the run again without "
                                                 "--resume" if damaged else
                                                 f"no resumable checkpoint for that run (%rlhf {kind} keeps TRL's "
                                                 "checkpoints of a stopped or crashed run only)"))
    checkpoint.refuse_continued(found, f"--resume {spec}")
    if saved_command(runs / spec) != kind:
        raise UsageError(f"--resume {spec}: that run is not a %rlhf {kind} run")
    return found


def saved_command(run_dir: Path) -> str | None:
    """The %rlhf command a run recorded in its options (`TrlTraining.resume_values`)."""
    try:
        return checkpoint.run_options(run_dir)["options"].get("command")
    except UsageError:
        return None
