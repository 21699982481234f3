"""An exported job's entry point (`train.py` of `%llm export` calls `main`).

`python train.py` runs the method in one process; `torchrun --nproc-per-node N
train.py` (one node) or `torchrun --nnodes M --node-rank R --master-addr HOST
--master-port PORT --nproc-per-node N train.py` (several) runs it on the engine's
`DistributedTrainLoop`, exactly as `--devices` does from a notebook. Either way
the Result is recorded in the run store of this machine's llm-magics home
(LLM_MAGICS_HOME, or ~/.cache/llm_magics), where `%llm compare` shows it beside
the notebook's runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

JOB = "job.json"


def job_values(folder: Path) -> tuple[dict, dict]:
    """(the job's description, the method's option values with its data files made absolute)."""
    job = json.loads((folder / JOB).read_text())
    values = dict(job["options"])
    for key, name in job.get("data_files", {}).items():
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
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from ..runner import build_options, execute
        from ..registry import registry
        values.update(devices=1, nodes=1)
        options = build_options(registry().load(job["method"]), None, values)
        result = execute(job["method"], None, options, progress_mode="text")
        print(result)
        return 0
    os.environ["LLM_MAGICS_WORKER"] = "1"
    from ..errors import UsageError
    from ..progress import make_progress
    from ..runner import finish
    from .worker import run_rank, shutdown
    started = time.perf_counter()
    run_id = _run_id(job["method"])
    try:
        rank = int(os.environ.get("RANK", 0))
        sinks = make_progress(run_id, job["method"], "text").sinks if rank == 0 else None
        rank, result, options, ctx, peak = run_rank(job["method"], None, values, run_id, None, sinks)
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
