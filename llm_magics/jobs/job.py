"""An exported job's entry point (`train.py` of `%llm export` calls `main`).

The job names the method and its subcommand as its run record does (`method` "rlhf", `command` "dpo"; a job
exported before the record kept them apart joined them: "rlhf dpo").
`python train.py` runs the method in one process; `torchrun --nproc-per-node N
train.py` (one node) or `torchrun --nnodes M --node-rank R --master-addr HOST
--master-port PORT --nproc-per-node N train.py` (several) runs it on the engine's
`DistributedTrainLoop`, exactly as `--devices` does from a notebook. Either way
the Result is recorded in the run store of this machine's llm-magics home
(LLM_MAGICS_HOME, or ~/.cache/llm_magics), where `%llm compare` shows it beside
the notebook's runs. A command that runs in one process (`%rlhf ppo|grpo|rloo`) refuses torchrun in one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ..records import run_title

JOB = "job.json"


def job_method(job: dict) -> tuple[str, str | None]:
    """(the registered method, its subcommand or None) of a job description, an older one's joined name
    read as the run store reads an older record."""
    if "command" in job:
        return job["method"], job["command"]
    from ..runs.store import legacy_split
    return legacy_split(job["method"])


def job_values(folder: Path) -> tuple[dict, dict]:
    """(the job's description, the method's option values with its data files and the model folders it names
    relative to itself made absolute)."""
    job = json.loads((folder / JOB).read_text())
    values = dict(job["options"])
    for key, name in {**job.get("data_files", {}), **job.get("paths", {})}.items():
        values[key] = str((folder / name).resolve())
    return job, values


def _run_id(method: str) -> str:
    """The same id on every rank: derived from torchrun's own run id."""
    seed = os.environ.get("TORCHELASTIC_RUN_ID", "") + os.environ.get("MASTER_ADDR", "") + \
        os.environ.get("MASTER_PORT", "")
    return f"{method}-{hashlib.sha256(seed.encode()).hexdigest()[:12]}"


def main(folder: str | Path) -> int:
    folder = Path(folder).resolve()
    job, values = job_values(folder)
    from .. import settings
    settings.reset()
    name, word = job_method(job)
    title = run_title(name, word)
    from ..errors import UsageError
    from ..registry import registry
    cls = registry().load(name)
    command = cls.command(word)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not command.launchable:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"UsageError: {title} runs in one process: run `python train.py` (README.md)",
                  file=sys.stderr, flush=True)
        return 3
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        import types

        from ..runner import RunContext, _run, build_options, new_run_id
        fields = getattr(command.options, "__dataclass_fields__", {})
        values.update({k: 1 for k in ("devices", "nodes") if k in fields})
        handler = getattr(cls(), command.handler)

        def marked(method, o, ctx):   # the record names the job folder, as a launched job's does
            result = handler(o, ctx)
            if getattr(result, "artifacts", None) is not None:
                result.artifacts["job"] = str(folder)
            return result
        try:
            options = build_options(cls, word, values)
            ctx = RunContext(new_run_id(name), name, settings.current(), {}, "text", command=word)
            result = _run(types.MethodType(marked, handler.__self__), command, options, ctx)
        except UsageError as exc:
            print(f"UsageError: {exc}", file=sys.stderr, flush=True)
            return 3
        print(result)
        return 0
    os.environ["LLM_MAGICS_WORKER"] = "1"
    from ..progress import make_progress
    from ..runner import finish
    from .worker import run_rank, shutdown
    started = time.perf_counter()
    run_id = _run_id(name)
    try:
        rank = int(os.environ.get("RANK", 0))
        sinks = make_progress(run_id, title, "text").sinks if rank == 0 else None
        rank, result, options, ctx, peak = run_rank(name, word, values, run_id, None, sinks)
        ctx.command = word
        if result is not None:
            world = int(os.environ["WORLD_SIZE"])
            strategy = getattr(options, "strategy", "ddp")
            result.device = f"{result.device} ×{world} ({'ddp' if strategy == 'auto' else strategy})"
            result.artifacts["job"] = str(folder)
            finish(result, ctx, options, time.perf_counter() - started, peak)
            print(result)
        return 0
    except UsageError as exc:
        print(f"UsageError: {exc}", file=sys.stderr, flush=True)
        return 3
    finally:
        shutdown()
