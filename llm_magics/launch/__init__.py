"""Past one device: a training run as torchrun workers, streamed back into the notebook.

    %finetune --model minilm --data df --train all --devices 2        # two workers (DDP)
    %lora --model smollm2 --data df --devices 4 --strategy ddp

`run_launched(method, options, ctx)` is what a command's launcher (`launch_<handler>`, which the
runner calls when `--devices` or `--nodes` is above 1) does: it writes the run's spec and data
(`spec.py`, Parquet), starts torchrun (`launcher.py`) whose workers
(`llm_magics.jobs.worker`) run the same method on the engine's `DistributedTrainLoop`, replays
rank 0's progress events onto the run's live view (`events.py`), relays Stop, and
builds the Result from what rank 0 wrote (`result.py`). The runner then records
it as it records any run. `llm_magics.jobs.export` writes a recorded run out as a
job for a shell or a cluster. `strategy.py`
decides DDP, FSDP or DeepSpeed ZeRO-2/3 (the workers' loops: engine/distributed.py,
engine/deepspeed_loop.py) before anything is written; DeepSpeed without its extra
is refused in one line.

Everything the run writes lies in `<run folder>/launch/`: spec.json, the data
files, events.jsonl, launcher.log, rank<R>.log, result.json and final/ weights.

Timeouts (seconds, environment variables): LLM_MAGICS_RENDEZVOUS_TIMEOUT (120: the
workers must find each other), LLM_MAGICS_COLLECTIVE_TIMEOUT (300: a rank waiting on
a dead peer), LLM_MAGICS_SILENCE_TIMEOUT (1800: no event and no log line, the run is
ended as stuck).
"""
from __future__ import annotations

import dataclasses
import os
import shutil

from ..engine.device import cores_note
from ..errors import UsageError
from .options import check_launch, launched
from .strategy import choose_strategy

__all__ = ["launched", "run_launched", "choose_strategy"]


def run_launched(method, o, ctx, command: str | None = None, model: str | None = None, title: str | None = None):
    """Run `method` with options `o` as torchrun workers; the Result, as a one-process run returns it.

    The runner calls it with `o` alone for a training method. A subcommand that takes --devices
    (`%rlhf reward`, `%rlhf dpo`) names itself (`command`, the word the workers run), its model option's value (`model`;
    default `o.model`) and the live view's `title` (default `method.title(o, source)`). The kernel's Result
    is made usable from what the workers saved by its own `restore` hook (launch/result.py)."""
    from ..models import resolve
    from .launcher import Launcher
    from .result import read_result
    from .spec import make_spec
    check_launch(o)
    if getattr(o, "bits", None):
        raise UsageError("--bits (QLoRA) runs in one process; drop --devices or --bits")
    model = o.model if model is None and hasattr(o, "model") else model
    strategy, note = choose_strategy(o, lambda: resolve(model))   # refusals before anything is resolved
    source = resolve(model)
    world = o.devices * o.nodes
    folder = ctx.run_dir / "launch"
    if folder.exists():
        shutil.rmtree(folder)
    # The workers run the strategy chosen here (auto resolved); the run record keeps what was asked.
    spec = make_spec(method.name, command, dataclasses.replace(o, strategy=strategy), ctx.namespace, ctx.run_id,
                     ctx.settings, folder)
    spec_path = spec.write(folder)
    progress = ctx.progress(title or method.title(o, source))
    progress.log(f"{world} workers ({o.devices} on this machine"
                 + (f", node {o.node_rank} of {o.nodes}" if o.nodes > 1 else "") + f"); {note}")
    launcher = Launcher(folder, spec_path, o.devices, o.nodes, o.node_rank, o.master_addr,
                        rendezvous_timeout=float(os.environ.get("LLM_MAGICS_RENDEZVOUS_TIMEOUT", 120)),
                        silence_timeout=float(os.environ.get("LLM_MAGICS_SILENCE_TIMEOUT", 1800)))
    launcher.start()
    rc = launcher.follow(progress)
    if rc != 0 or not (folder / "result.json").exists():
        raise launcher.failure(rc)
    result = read_result(method, o, folder, spec, ctx)
    result.device = f"{result.device} ×{world} ({strategy})"
    result.notes += [note] + ([cores] if (cores := cores_note(o.devices)) else [])
    result.artifacts["launch"] = str(folder)
    ended = launcher.reader.ended or {}
    progress.end(result.status, **{k: v for k, v in (ended.get("kwargs") or {}).items() if k != "status"})
    return result
