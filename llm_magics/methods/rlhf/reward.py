"""`%rlhf reward`: a one-output sequence classifier trained on preference pairs with the Bradley–Terry
loss, on our training engine (full, head or a PEFT tuner)."""
from __future__ import annotations

import math

import pandas as pd
import torch

from ...engine.device import compute_dtype, train_dtype
from ...engine.features import default_pooling
from ...engine.limits import fit_max_length
from ...engine.rng import seeded
from ...engine.loop import TrainConfig, TrainLoop
from ...models import hold, load_model, resolve, trainable
from ...models.classifier import SequenceClassifier
from ...rlhf.reward import REWARD_FOLDER, PairTask, RewardResult, fix_score_bias, save_folder
from ...training import describe_run, plot_history
from .common import preference_data
from .launch import for_the_kernel
from .options import RewardOptions


def train_reward(o: RewardOptions, ctx) -> RewardResult:
    from ...launch import launched
    if launched(o):   # --devices/--nodes above 1: torchrun workers run this same function (launch.py)
        from .launch import launch_reward
        return launch_reward(o, ctx, f"rlhf reward · {resolve(o.model).short} · --train {o.train}")
    device = ctx.device(o.device)
    source = resolve(o.model)
    data, notes = preference_data(o, ctx)
    progress = ctx.progress(f"rlhf reward · {source.short} · --train {o.train}")
    loaded = load_model(source, "base", device, torch.float32, fresh=True, trust_remote_code=o.trust_remote_code)
    pooling = default_pooling(loaded.kind) if o.pooling == "auto" else o.pooling
    autocast = train_dtype(device, o.dtype)
    if device.type == "cpu" and autocast is not None and loaded.kind == "encoder":
        # PyTorch's CPU SDPA kernel under bf16 autocast with a padding mask: ~1.5× the CPU time of a training
        # step with eager attention (MiniLM, 16 × 140 tokens; 2.6 → 1.7 s of which attention was 14 of 19 s
        # forward); in fp32 the two are even, so only here.
        loaded.model.set_attn_implementation("eager")
    with seeded(o.seed):  # the head's initialisation, drawn from this run's seed alone (engine/rng.py)
        model = SequenceClassifier(loaded.model, 1, pooling, dropout=0.0).to(device)
    model.head.float()
    max_length = fit_max_length(o.max_length, loaded.tokenizer, loaded.model, notes=notes)   # finetune's rule
    task = PairTask(data, loaded.tokenizer, max_length, device)
    peft = None
    if o.train in ("full", "head"):
        applied = trainable.apply(model, "all" if o.train == "full" else "head").notes
        fix_score_bias(model)   # BT cannot see a constant offset: the head's bias stays zero (rlhf/reward.py)
        plan = trainable.report(model, f"--train {'all' if o.train == 'full' else 'head'}")
        plan.notes += applied
    else:
        from peft import get_peft_model

        from ...adapters.kinds import AdapterSpec
        from ...adapters.methods import build_config
        steps = math.ceil(len(task.lengths) / o.batch_size / o.grad_accum) * o.epochs
        spec = AdapterSpec.from_options(o)
        spec = AdapterSpec(**{**spec.__dict__, "method": o.train})
        config = build_config(spec, model, None, steps, source.path, modules_to_save=["head"])
        with seeded(o.seed):  # the adapter's initialisation, likewise
            peft = get_peft_model(model, config)
        fix_score_bias(peft)   # the head's trained copy (modules_to_save) included
        plan = trainable.report(peft, f"{o.train} r={o.r}")
    describe_run(ctx, progress, plan)
    config = TrainConfig(epochs=o.epochs, lr=o.peak_lr(), batch_size=o.batch_size, grad_accum=o.grad_accum,
                         max_grad_norm=o.max_grad_norm or None, weight_decay=o.weight_decay, warmup=o.warmup,
                         scheduler=o.scheduler, eval_every=o.eval_every, patience=o.patience,
                         best_metric="val_accuracy", greater_is_better=True, seed=o.seed,
                         autocast=autocast)
    # A launched worker's context names the engine's data-parallel loop (engine/distributed.py): ranks other
    # than 0 end inside it (RankDone); rank 0 goes on to score the held-out pairs and save the model.
    loop_class = getattr(ctx, "train_loop", TrainLoop)
    loop = loop_class(peft or model, task, config, progress, ctx.run_dir, device)
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
    folder = save_folder(model, loaded.tokenizer, ctx.run_dir / REWARD_FOLDER, max_length,
                         {"model": source.name, "run_id": ctx.run_id})
    history = pd.DataFrame(outcome.history)
    dtype, dtype_notes = compute_dtype(next(model.parameters()).dtype, autocast)
    result = RewardResult(
        method="rlhf reward", model=source.short, metrics=metrics, data_fingerprint=data.fingerprint,
        trainable_params=plan.trainable, total_params=plan.total, device=str(device),
        dtype=dtype, status=outcome.status,
        artifacts={"run_dir": str(ctx.run_dir), "reward_model": str(folder)},
        tables={"trainable parameters": plan.groups, **({"history": history} if len(history) else {})},
        figures={"training curves": plot_history(history, steps)} if len(history) else {},
        notes=notes + outcome.notes + plan.notes + dtype_notes + [f"reload after a restart: load_reward({ctx.run_id!r})"],
        history=history, _model=model, _tokenizer=loaded.tokenizer, _max_length=max_length,
        _folder=str(folder))
    result.tokens_per_s, result.rows_per_s = outcome.tokens_per_s, outcome.rows_per_s
    hold(result)
    progress.end(outcome.status, **{k: v for k, v in metrics.items() if k.startswith("test_")})
    return for_the_kernel(result, ctx)

