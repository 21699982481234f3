"""`--resume`: what a run saves so that it can be continued, finding the checkpoint to continue, and
refusing one whose data or options differ."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..common_options import run_to_resume
from ..engine import checkpoint
from ..errors import UsageError


def save_run_options(folder: Path, values: dict[str, Any], fingerprint: str, phase: int = 0) -> None:
    """What --resume checks (the user's options, the data) and which phase the run is in (`TrainingMethod.phases`)."""
    (folder / "run_options.json").write_text(json.dumps({"options": values, "data_fingerprint": fingerprint,
                                                         "phase": phase}))


def resumed_phase(folder: Path) -> int:
    """The phase a checkpoint was written in (0 for a run of one phase, and for checkpoints older than phases)."""
    return int(checkpoint.run_options(folder.parent).get("phase", 0))


def find_checkpoint(spec: str, ctx) -> Path:
    runs = ctx.settings.subdir("runs")
    if spec == "last":
        candidates = sorted((p for p in runs.glob(f"{ctx.method}-*/checkpoint-last") if checkpoint.exists(p)),
                            key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UsageError(f"--resume last: no stopped or crashed {ctx.method} run has a checkpoint to resume")
        return checkpoint.resumable(candidates[-1], "--resume last")   # whole, once (engine/checkpoint.py)
    folder = runs / spec / "checkpoint-last"
    problem = run_to_resume(spec)   # the option's check, again for callers that skip the parser
    if problem or not folder.resolve().is_relative_to(runs.resolve()):   # nothing outside the runs folder
        raise UsageError(f"--resume: {problem or f'{spec!r} leads out of the runs folder; name a run id'}")
    if not checkpoint.exists(folder):
        checkpoint.refuse_continued(folder, f"--resume {spec}")
        known = sorted(p.parent.name for p in runs.glob("*/checkpoint-last") if checkpoint.exists(p))
        raise UsageError(f"--resume {spec}: no resumable checkpoint for that run"
                         + (f"; resumable: {', '.join(known)}" if known else "; no run has one"))
    return checkpoint.resumable(folder, f"--resume {spec}")


def check_resumable(folder: Path, values: dict[str, Any], fingerprint: str) -> None:
    saved = checkpoint.run_options(folder.parent)
    if saved["data_fingerprint"] != fingerprint:
        raise UsageError("--resume: the data differ from the interrupted run's; pass the same --data/--validation/--test")
    changed = [f"--{k.replace('_', '-')} {saved['options'].get(k)!r} (now {v!r})"
               for k, v in values.items() if saved["options"].get(k) != v]
    if changed:
        raise UsageError("--resume continues the same run; these options differ from it: " + "; ".join(changed))

