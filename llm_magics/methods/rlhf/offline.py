"""`%rlhf dpo|kto|orpo`: a policy tuned on preference pairs through TRL's trainer, on the training base (device,
dtype, live view, Stop, the record, --devices); only its own choices here: the pairs, the reference, TRL's
trainer, and the implicit rewards of the held-out pairs before and after."""
from __future__ import annotations

import copy
import time

from ...errors import UsageError
from ...training import Outcome
from .common import preference_data
from .launch import launch_trl
from .trainers import PolicyRun, TrlTraining


class OfflineTraining(TrlTraining):
    """DPO, KTO or ORPO (`kind`) through TRL: the same data, devices, live view, Stop, adapters and metrics."""

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"rlhf {kind}"

    def title(self, o, source) -> str:
        return f"{self.name} · {source.short} · --method {o.method} · β={o.beta}"

    def adapter_steps(self, o) -> int:
        return o.steps or 100

    def check(self, run: PolicyRun) -> None:
        check_options(self.kind, run.options)
        super().check(run)

    def prepare_data(self, run: PolicyRun) -> None:
        o = run.options
        run.data, run.notes = preference_data(o, run.ctx)
        steps_rows = (o.steps or 0) * o.batch_size * o.grad_accum
        if self.kind == "dpo" and steps_rows and len(run.data.train) > steps_rows:
            # The run sees only this many pairs: the reference log-probs are precomputed for those alone.
            run.data.train = run.data.train.sample(steps_rows, random_state=o.seed).reset_index(drop=True)

    def longest_row(self, o) -> int:
        """DPO's packed pair rows (preference/shared_prompt.py) hold at most both sequences of a pair."""
        return 2 * o.max_length + 1 if self.kind == "dpo" else 0

    def build_trainer(self, run: PolicyRun, peft_config):
        from ...preference.trl_bridge import offline_trainer
        o, model, workers = run.options, run.loaded.model, run.ctx.world
        reference = None
        if o.method == "full" and self.kind == "kto":   # KTO trains against a frozen copy; DPO precomputes the
            reference = copy.deepcopy(model).eval().requires_grad_(False)   # reference's log-probs, ORPO has none
        run.reference = reference
        shared = run.ctx.run_dir / "trl" / "pairs" if workers > 1 else None
        started = time.perf_counter()
        trainer = offline_trainer(self.kind, o, model, reference, run.data, run.tokenizer, peft_config,
                                  run.callback, self.trl_args(run, workers), shared)
        run.measured["train_seconds"] = time.perf_counter() - started   # TRL's data preparation counts
        if workers > 1:   # what accelerate made of the worker's process group (MULTI_CPU on gloo, MULTI_GPU)
            state = trainer.accelerator.state
            run.notes.append(f"trained on {state.num_processes} processes: TRL's trainer as "
                             f"{state.distributed_type.value} ({state.backend}), each taking "
                             f"{o.batch_size // workers} of every {o.batch_size} pairs")
        return trainer

    def train(self, run: PolicyRun) -> Outcome:
        if run.ctx.rank != 0:   # a launched worker other than rank 0: train, then end (rank 0 scores and saves)
            from ...engine.distributed import RankDone
            self.train_trl(run)
            raise RankDone()
        before, run.reference_lp = self.held_out_before(run)
        run.measured.update({f"{k}_before": v for k, v in before.items()})
        started = time.perf_counter()
        self.train_trl(run)
        run.measured["train_seconds"] += time.perf_counter() - started
        return self.trained(run)

    def held_out_before(self, run: PolicyRun):
        """(the held-out pairs' implicit rewards before training, the reference's log-probs of them), once: from
        the frozen copy, the policy with its adapter disabled, or the policy itself before training moves it."""
        from ...preference.trl_bridge import implicit_rewards, pair_logprobs
        o, policy, frame = run.options, run.model, held_out(run.data)
        if run.reference is not None:
            reference_lp = pair_logprobs(run.reference, run.tokenizer, frame, o.max_length)
        elif o.method != "full":
            with policy.disable_adapter():
                reference_lp = pair_logprobs(policy, run.tokenizer, frame, o.max_length)
        else:
            reference_lp = pair_logprobs(policy, run.tokenizer, frame, o.max_length)
        before_lp = reference_lp if run.reference is None and o.method == "full" else \
            pair_logprobs(policy, run.tokenizer, frame, o.max_length)
        return implicit_rewards(before_lp, reference_lp, o.beta, "test"), reference_lp

    def build_result(self, run: PolicyRun, outcome: Outcome):
        from .results import PreferenceResult
        from ...preference.trl_bridge import implicit_rewards, pair_logprobs
        o, policy = run.options, run.trainer.model.eval()
        measured = dict(run.measured)
        metrics = {k: v for k, v in measured.items() if k.endswith("_before")}
        pairs = held_out(run.data)
        after_lp = pair_logprobs(policy, run.tokenizer, pairs, o.max_length)
        metrics.update(implicit_rewards(after_lp, run.reference_lp, o.beta, "test"))
        if outcome.losses:
            metrics["train_loss"] = float(outcome.losses[-1][1])
        metrics["steps"] = outcome.steps
        metrics["train_seconds"] = measured["train_seconds"]   # TRL's data preparation and loop, loading excluded
        result = PreferenceResult.build(self.name, o, run.source, run.loaded, policy, run.plan, outcome.status,
                                        metrics, run.callback.logs, run.data, run.ctx, run.device, run.notes,
                                        run.name, autocast=run.autocast)
        if after_lp is not None and run.reference_lp is not None:
            result.predictions = held_out_predictions(pairs, after_lp, run.reference_lp, o.beta, run.ctx,
                                                      result.artifacts)
        return result

    def end_metrics(self, result) -> dict[str, float]:
        return {k: v for k, v in result.metrics.items() if k.startswith("test_") and "before" not in k}


def check_options(kind: str, o) -> None:
    if kind != "dpo" and o.sft_weight:
        raise UsageError(f"--sft-weight is a DPO option (RPO); %rlhf {kind} has no such term: drop it or use dpo")


def launch_offline(method, kind: str, o, ctx):
    """`--devices/--nodes` above 1 (the runner's call): torchrun workers run the command (launch.py)."""
    from ...models import resolve
    from .trainers import trl_checkpoint
    check_options(kind, o)
    if o.resume:   # a checkpoint that is not there is one line in the kernel, before any worker starts
        trl_checkpoint(o.resume, ctx, kind)
    return launch_trl(method, kind, o, ctx, OfflineTraining(kind).title(o, resolve(o.policy)))


def held_out_predictions(frame, policy_lp, reference_lp, beta: float, ctx, artifacts):
    """Per held-out pair, the policy's implicit rewards as a reward model's scores (`pair_predictions`): a DPO, KTO
    or ORPO run pairs up in `%llm compare --paired` with another one, or with a `%rlhf reward` run on the same
    pairs; kept in the run's folder."""
    from ...preference.reward import pair_predictions
    from ...preference.trl_bridge import implicit_pair_rewards
    from ...runs import predictions
    kept = pair_predictions(frame, *implicit_pair_rewards(policy_lp, reference_lp, beta))
    return predictions.kept_with_run(kept, ctx.run_dir, artifacts)


def held_out(data):
    """The pairs the implicit rewards are measured on: the test pairs, or the validation ones without them."""
    return data.test if len(data.test) else data.validation
