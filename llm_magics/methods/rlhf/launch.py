"""`--devices N` for the %rlhf commands that train on pairs: `reward` (our engine's data-parallel loop) and
`dpo|kto|orpo` (TRL's Trainer under torchrun: accelerate finds the process group our worker started and
runs as MULTI_CPU on gloo, or MULTI_GPU on NCCL, and wraps the policy in DDP).

    %rlhf reward --model minilm --data prefs.jsonl --devices 2 --out rm
    %rlhf dpo --policy smollm2 --data prefs.jsonl --method lora --devices 2 --out dpo_run

In the kernel: the user's mistakes are found before any process starts (the pairs are read and checked, the
adapter name must be free, the batch must split over the workers), then `llm_magics.launch.run_launched` runs
the same command on the workers. Each worker reads the pairs itself; rank 0 streams the live view, evaluates the
held-out pairs and saves what the Result holds (the reward model's folder, the LoRA adapter's folder or the
policy's), and the kernel's Result is rebuilt from those folders: `rm.score(...)` loads the reward model on first
use, a LoRA policy joins the session's adapters (`%lora adapters` lists it), a fully tuned policy is loaded on
the CPU. `--batch-size` stays the global batch: each of N workers takes batch/N pairs a step, so a run on N
processes takes the steps a one-process run takes, on the same pairs.
"""
from __future__ import annotations

from ...errors import UsageError

TRL_KINDS = ("dpo", "kto", "orpo")


def launch_reward(method, o, ctx, title: str):
    """`%rlhf reward --devices N`: our engine's loop on N workers (DDP, or FSDP when asked)."""
    from ...launch import run_launched
    from .common import preference_data
    preference_data(o, ctx)   # a malformed pair is the user's one line before any process starts
    return run_launched(method, o, ctx, command="reward", model=o.model, title=title)


def launch_trl(method, kind: str, o, ctx, title: str):
    """`%rlhf dpo|kto|orpo --devices N`: TRL's trainer on N workers (DDP)."""
    from ...launch import run_launched
    from .common import preference_data
    if o.strategy not in ("auto", "ddp"):
        raise UsageError(f"--strategy {o.strategy}: %rlhf {kind} runs TRL's trainer data-parallel (ddp) across "
                         f"--devices; drop --strategy (sharding is for %finetune, %lora and %rlhf reward)")
    workers = o.devices * o.nodes
    if o.batch_size % workers:
        raise UsageError(f"--batch-size {o.batch_size} does not split over {workers} workers: it is the global "
                         f"batch (each worker takes batch/{workers} pairs a step); pass a multiple of {workers}")
    if kind == "kto" and o.batch_size // workers < 2:
        raise UsageError(f"--batch-size {o.batch_size} over {workers} workers leaves each one pair a step; KTO's "
                         f"KL estimate needs at least 2 per worker: pass --batch-size {2 * workers} or more")
    if o.method != "full":
        from ...adapters import hub
        hub().check_free(o.name or ctx.run_id)
    preference_data(o, ctx)
    return run_launched(method, o, ctx, command=kind, model=o.policy, title=title)
