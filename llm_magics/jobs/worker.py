"""A launched run's worker: `python -m llm_magics.jobs.worker SPEC` under torchrun (launch/launcher.py starts it).

Every rank: writes its output to `launch/rank<R>.log` and its pid to
`launch/rank<R>.pid`, ends itself when its launcher (torchrun's agent) is gone (no
orphan outlives the run), joins the process group, and runs the method the kernel
asked for with the kernel's options and settings, on a `WorkerContext`: the run's
id and folder are the kernel's, its progress is an `EventWriter` (rank 0's calls
stream to the kernel), and its training loop is the engine's
`DistributedTrainLoop`. Rank 0 writes the Result (`launch/result.json`); a user
mistake is written to `launch/error.json` so the kernel raises the same one line.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ERROR = "error.json"


def _redirect_output(path: Path) -> None:
    log = open(path, "a", buffering=1, encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    faulthandler.enable(log)


def _watch_parent(interval: float = 0.5) -> None:
    """End this process when the process that started it is gone."""
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(70)
    threading.Thread(target=watch, daemon=True, name="llm-magics-parent-watch").start()


def _context_class():
    from ..engine.distributed import DistributedTrainLoop
    from ..runner import RunContext

    @dataclass
    class WorkerContext(RunContext):
        """The kernel's run (id, folder, settings), seen from one rank."""
        rank_device: object = None
        writer: object = None
        train_loop: object = DistributedTrainLoop

        def progress(self, title: str | None = None):
            if title:
                self.writer.state.title = title
            return self.writer

        def device(self, preference: str | None = None):
            return self.rank_device

    return WorkerContext


def run_rank(method_name: str, command_word: str | None, values: dict, run_id: str, events: Path | None,
             sinks: list | None = None):
    """Join the process group and run the method on this rank: (rank, Result or None, options,
    context, peak bytes). Ranks other than 0 return no Result (their loop ends them)."""
    from .. import options as opts
    from .. import settings
    from ..engine.device import MemoryMonitor
    from ..engine.distributed import RankDone, init_process_group
    from ..engine.parallel import loop_for
    from ..registry import registry
    from ..launch.events import EventWriter
    rank, world, device = init_process_group(float(os.environ.get("LLM_MAGICS_COLLECTIVE_TIMEOUT", 300)))
    print(f"rank {rank} of {world} on {device}", flush=True)
    cls = registry().load(method_name)
    command = cls.command(command_word)
    options = opts.from_kwargs(command.options, dict(values))
    writer = EventWriter(events if rank == 0 else None, run_id, method_name, sinks if rank == 0 else None)
    if rank == 0 and events is not None:
        writer.stop_file = Path(events).parent / "STOP"
    ctx = _context_class()(run_id, method_name, settings.current(), {}, "none",
                           rank=rank, world=world, rank_device=device, writer=writer)
    ctx.train_loop = loop_for(getattr(options, "strategy", "ddp"))
    try:
        with MemoryMonitor(device) as memory:
            result = getattr(cls(), command.handler)(options, ctx)
    except RankDone:
        return rank, None, options, ctx, 0
    finally:
        writer.close()
    return rank, result, options, ctx, memory.peak_bytes


def main(spec_path: str) -> int:
    spec_file = Path(spec_path)
    folder = spec_file.parent
    rank = int(os.environ.get("RANK", 0))
    os.environ["LLM_MAGICS_WORKER"] = "1"
    _redirect_output(folder / f"rank{rank}.log")
    (folder / f"rank{rank}.pid").write_text(str(os.getpid()))
    _watch_parent()
    from ..errors import UsageError
    from ..launch.result import write_result
    from ..launch.spec import LaunchSpec, apply_settings
    spec = LaunchSpec.read(spec_file)
    os.chdir(spec.cwd)
    apply_settings(spec.settings)
    try:
        rank, result, _, _, peak = run_rank(spec.method, spec.command, spec.options, spec.run_id,
                                            folder / "events.jsonl")
        if result is not None:
            result.peak_mem_bytes = result.peak_mem_bytes or peak
            write_result(result, folder)
        return 0
    except UsageError as exc:
        _write_error(folder, rank, "UsageError", str(exc))
        print(f"UsageError: {exc}", flush=True)
        return 3
    except BaseException as exc:   # noqa: BLE001 - the log keeps the traceback; the kernel shows its tail
        traceback.print_exc()
        _write_error(folder, rank, type(exc).__name__, str(exc))
        return 1
    finally:
        shutdown()


def shutdown() -> None:
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:   # noqa: BLE001
        pass


def _write_error(folder: Path, rank: int, kind: str, message: str) -> None:
    """The first failing rank's error, whole or not at all: the launcher may read it at any moment (it
    was seen reading an empty file), and another rank may be writing its own."""
    path, staged = folder / ERROR, folder / f"{ERROR}.rank{rank}"
    staged.write_text(json.dumps({"rank": rank, "type": kind, "message": message}))
    try:
        os.link(staged, path)   # atomic, and fails if a rank got there first
    except FileExistsError:
        pass
    finally:
        staged.unlink(missing_ok=True)


if __name__ == "__main__":
    code = main(sys.argv[1])
    print(f"worker exits with {code} at {time.time():.3f}", flush=True)
    # Straight out: the Result is written, and tearing down torch and transformers' modules costs
    # seconds the notebook would wait for.
    os._exit(code)
