"""`%rlhf reward`: a one-score sequence classifier trained on preference pairs with the Bradley–Terry loss, on
the training base (device, dtype, live view, Stop, the engine's loop, the record): only its own choices here."""
from __future__ import annotations

import math

from ...engine.features import default_pooling
from ...engine.limits import fit_max_length
from ...engine.rng import seeded
from ...models import load_model, trainable
from ...models.classifier import SequenceClassifier
from ...preference.reward import REWARD_FOLDER, PairTask, fix_score_bias, save_folder, with_tuner
from ...runs import predictions
from .results import RewardResult
from ...training import TRAINING_RESUME_KEYS, TrainingMethod, result_fields
from .common import preference_data


class RewardTraining(TrainingMethod):
    name = "rlhf reward"
    task = "classify"   # the loop keeps the weights of the best validation pair accuracy
    # what --resume must find unchanged beside the data: what trains and how (the tuner's shape included)
    resume_keys = TRAINING_RESUME_KEYS + ("train", "r", "alpha", "dropout", "target", "patience")

    def peak_lr(self, o) -> float:
        return o.peak_lr()   # the default, declared with the options

    def title(self, o, source) -> str:
        return f"rlhf reward · {source.short} · --train {o.train}"

    def prepare_data(self, run) -> None:
        run.data, run.notes = preference_data(run.options, run.ctx)

    def prepare(self, run) -> None:
        o, device = run.options, run.device
        tuned = o.train not in ("full", "head")   # a PEFT tuner
        # A base that does not train (under a tuner, or below the head) loads as %lora's does.
        loaded = load_model(run.source, "base", device, self.load_dtype(run, frozen=o.train != "full"), fresh=True,
                            trust_remote_code=o.trust_remote_code)
        self.loaded_in(run, loaded.dtype)
        if device.type == "cpu" and run.autocast is not None and loaded.kind == "encoder":
            loaded.model.set_attn_implementation("eager")   # CPU SDPA under bf16 autocast + padding: ~1.5x slower
        pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
        with seeded(o.seed):  # the head's initialisation, drawn from this run's seed alone (engine/rng.py)
            model = SequenceClassifier(loaded.model, 1, pooling, dropout=0.0).to(device)
        model.head.float()
        run.max_length = fit_max_length(o.max_length, loaded.tokenizer, loaded.model, notes=run.notes)
        run.loaded, run.tokenizer = loaded, loaded.tokenizer
        run.engine_task = PairTask(run.data, loaded.tokenizer, run.max_length, device)
        if tuned:
            steps = math.ceil(len(run.engine_task.lengths) / o.batch_size / o.grad_accum) * o.epochs
            run.model = with_tuner(model, o, steps, run.source.path, o.seed)
            run.plan = trainable.report(run.model, f"{o.train} r={o.r}")
            return
        what = "all" if o.train == "full" else "head"
        applied = trainable.apply(model, what).notes
        fix_score_bias(model)   # BT cannot see a constant offset: the head's bias stays zero (rlhf/reward.py)
        run.model, run.plan = model, trainable.report(model, f"--train {what}")
        run.plan.notes += applied

    def build_result(self, run, outcome) -> RewardResult:
        model = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
        model.requires_grad_(False).eval()
        first = outcome.history[0] if outcome.history else {}
        metrics = {f"{k}_before": v for k, v in first.items() if k in ("val_accuracy", "val_margin")}
        test_metrics, kept = run.engine_task.scored_test(model, run.data.test)
        metrics.update(run.engine_task.split_scores(model, "val"), **test_metrics)
        if outcome.losses:
            metrics["train_loss"] = float(outcome.losses[-1][1])
        metrics["steps"] = outcome.steps
        folder = save_folder(model, run.tokenizer, run.ctx.run_dir / REWARD_FOLDER, run.max_length,
                             {"model": run.source.name, "run_id": run.ctx.run_id})
        fields = {**result_fields(run, outcome, model), "method": self.name, "metrics": metrics}
        fields["artifacts"]["reward_model"] = str(folder)
        fields["notes"].append(f"reload after a restart: load_reward({run.ctx.run_id!r})")
        if kept is not None:   # per pair: two reward runs on the same pairs pair up (%llm compare --paired)
            fields["predictions"] = predictions.kept_with_run(kept, run.ctx.run_dir, fields["artifacts"])
        return RewardResult(**fields, _model=model, _tokenizer=run.tokenizer, _max_length=run.max_length,
                            _folder=str(folder))
