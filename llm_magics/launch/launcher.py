"""Start torchrun for a run, stream its events back, stop it, and leave no process behind.

Why torchrun and not `accelerate launch`: torchrun ships with torch (no config file,
no extra), its agent starts one worker per device, ends every sibling when one of
them fails (`--max-restarts 0`), and takes the rendezvous timeout and the multi-node
addresses as plain flags. DeepSpeed runs inside the same workers (the engine's loop
calls `deepspeed.initialize`); `%llm export` writes an accelerate config for it.

The agent runs in its own session (process group) so Stop, an error or a second
interrupt can end it and its workers without touching the kernel. torchrun puts
each worker in a session of its own, so the launcher also tracks the workers by
pid (each writes `launch/rank<R>.pid`, and the agent's children are read at every
poll) and ends each one that is still alive when the run is over: nothing outlives
the cell. The kernel itself never imports CUDA for this: it only starts processes
and reads files.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from ..errors import UsageError
from .events import EventReader

LOG_TAIL = 25

# What the workers get of the kernel's environment: what Python, torch, torchrun, the hub libraries, the BLAS
# and GPU runtimes and llm-magics read, and the locale and temp folders. The rest (API keys and other secrets a
# notebook sets) stays in the kernel. HF_TOKEN and the proxy settings do pass: the workers may load from the
# hub as the kernel does.
WORKER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS",
              "PYTHONNOUSERSITE", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "VIRTUAL_ENV", "CONDA_PREFIX",
              "LD_LIBRARY_PATH", "XDG_CACHE_HOME", "MASTER_ADDR", "MASTER_PORT", "TOKENIZERS_PARALLELISM",
              "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
              "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
WORKER_ENV_PREFIXES = ("LLM_MAGICS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "PET_",
                       "CUDA_", "NCCL_", "GLOO_", "TP_", "NVIDIA_", "HIP_", "ROCR_", "OMP_", "MKL_", "KMP_",
                       "OPENBLAS_", "TRITON_", "DS_", "ACCELERATE_", "TQDM_", "LC_")


def worker_env(environ: dict[str, str]) -> dict[str, str]:
    """The part of `environ` a worker needs (WORKER_ENV), with the launcher's own settings."""
    env = {k: v for k, v in environ.items() if k in WORKER_ENV or k.startswith(WORKER_ENV_PREFIXES)}
    env.pop("LLM_MAGICS_WORKER", None)
    return env

# torchrun's agent, told by Linux to take SIGTERM when the kernel dies (it then ends its workers,
# whose own watch ends them when the agent is gone): a dead kernel leaves no training behind.
AGENT = """import ctypes, os, signal, sys
kernel = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass   # not Linux: the launcher's own cleanup still ends the run when the cell ends
if os.getppid() != kernel:
    sys.exit(70)
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run"] + sys.argv[2:])
"""


class WorkerFailed(RuntimeError):
    """A worker crashed or was killed: one message with the tail of its log (no traceback
    of the launcher in a notebook)."""

    def _render_traceback_(self):   # IPython shows this instead of a traceback
        return [f"WorkerFailed: {self}"]


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def last_lines(*logs: Path) -> str:
    """The tail of the first of `logs` that has a line, named; or that none has one."""
    for log in logs:
        text = tail(log)
        if text:
            return f"Last lines of {log}:\n{text}"
    names = ", ".join(Path(log).name for log in dict.fromkeys(logs))
    return f"No log holds a line ({names} in {Path(logs[0]).parent}): the processes ended before writing one."


class Launcher:
    """One launched run: `start()`, then `follow(progress)` until the workers end."""

    def __init__(self, folder: Path, spec_path: Path, devices: int, nodes: int = 1, node_rank: int = 0,
                 master_addr: str | None = None, master_port: int = 29500, rendezvous_timeout: float = 120.0,
                 stop_grace: float = 60.0, poll: float = 0.1, silence_timeout: float | None = 1800.0):
        self.folder, self.spec_path = Path(folder), Path(spec_path)
        self.devices, self.nodes, self.node_rank = devices, nodes, node_rank
        self.master_addr, self.master_port = master_addr, master_port
        self.rendezvous_timeout, self.stop_grace, self.poll = rendezvous_timeout, stop_grace, poll
        self.silence_timeout = silence_timeout   # no event and no log line for this long: the run is stuck
        self.proc: subprocess.Popen | None = None
        self.known: dict[int, psutil.Process] = {}
        self.stop_sent_at: float | None = None
        self.reader = EventReader(self.folder / "events.jsonl")

    # -- the command --------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [sys.executable, "-c", AGENT, str(os.getpid()), f"--nproc-per-node={self.devices}",
               "--max-restarts=0", "--monitor-interval=0.2",
               f"--log-dir={self.folder / 'torchrun'}"]   # else torchrun leaves an empty folder in /tmp each run
        if self.nodes == 1:
            cmd += ["--standalone", f"--rdzv-conf=join_timeout={int(self.rendezvous_timeout)}"]
        else:
            cmd += [f"--nnodes={self.nodes}", f"--node-rank={self.node_rank}",
                    f"--master-addr={self.master_addr}", f"--master-port={self.master_port}",
                    f"--rdzv-conf=join_timeout={int(self.rendezvous_timeout)}"]
        return cmd + ["-m", "llm_magics.jobs.worker", str(self.spec_path)]

    def start(self) -> None:
        env = worker_env(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(self.devices, 1))))
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = self.folder / "launcher.log"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True, cwd=os.getcwd())
        finally:
            log.close()
        self._track()

    # -- following ------------------------------------------------------------------------
    def _track(self) -> None:
        """Remember every process of the run (the agent's children, and the pids the workers wrote)."""
        try:
            agent = psutil.Process(self.proc.pid)
            for p in [agent] + agent.children(recursive=True):
                self.known.setdefault(p.pid, p)
        except psutil.Error:
            pass
        for pid_file in self.folder.glob("rank*.pid"):
            try:
                pid = int(pid_file.read_text())
                if pid not in self.known:
                    self.known[pid] = psutil.Process(pid)
            except (ValueError, OSError, psutil.Error):
                pass

    def _activity(self) -> int:
        """Bytes written so far to the events file and the logs: they grow while the run lives."""
        total = 0
        for path in [self.reader.path, self.log_path, *self.folder.glob("rank*.log")]:
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    def request_stop(self) -> None:
        """Workers stop at the next optimizer step (they agree on it), keeping the best checkpoint."""
        if self.stop_sent_at is None:
            (self.folder / "STOP").write_text(str(time.time()))
            self.stop_sent_at = time.monotonic()

    def follow(self, progress) -> int:
        """Relay events until the agent exits; its exit code. Stop (the progress' flag) is sent
        to the workers; a run that does not stop within `stop_grace` seconds is ended."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, lambda *_: self._interrupt(progress)) if main else None
        last_sign, last_size = time.monotonic(), -1
        try:
            while True:
                size = self._activity() + self.reader.relay(progress)
                if size != last_size:
                    last_sign, last_size = time.monotonic(), size
                elif self.silence_timeout and time.monotonic() - last_sign > self.silence_timeout:
                    self.end_all()
                    raise WorkerFailed(f"the workers showed no sign of life (no event, no log line) for "
                                       f"{self.silence_timeout:.0f} s; they were ended. "
                                       f"{last_lines(self.log_path)}")
                if progress.should_stop:
                    self.request_stop()
                rc = self.proc.poll()
                if rc is not None:
                    self.reader.relay(progress)
                    return rc
                self._track()
                if self.stop_sent_at is not None and time.monotonic() - self.stop_sent_at > self.stop_grace:
                    self.end_all()
                    raise WorkerFailed(f"the workers did not stop within {self.stop_grace:.0f} s of Stop; "
                                       f"they were ended (logs in {self.folder})")
                time.sleep(self.poll)
        finally:
            if main and previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.end_all()
            self.remove_scratch()

    def remove_scratch(self) -> None:
        """The other ranks' scratch folders (`.rank<R>` in the run's folder) once every worker is gone. A rank
        removes its own when the run ends well; after a failure or a kill nothing reads them: `--resume`
        continues from rank 0's checkpoints, which lie in the run's folder itself (engine/distributed.py)."""
        for scratch in self.folder.parent.glob(".rank*"):
            if scratch.name[len(".rank"):].isdigit() and scratch.is_dir() and not scratch.is_symlink():
                shutil.rmtree(scratch, ignore_errors=True)

    def _interrupt(self, progress) -> None:
        """First interrupt: stop cleanly at the next step; second: end every worker now."""
        if self.stop_sent_at is not None or progress.should_stop:
            self.end_all()
            raise KeyboardInterrupt
        progress.request_stop()

    def end_all(self, wait: float = 5.0) -> None:
        """SIGTERM, then SIGKILL, every process of the run still alive; reap the agent."""
        self._track()
        alive = [p for p in self.known.values() if _alive(p)]
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, still = psutil.wait_procs(alive, timeout=wait)
        for p in still:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(still, timeout=wait)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- when it failed ---------------------------------------------------------------------
    def failure(self, rc: int) -> BaseException:
        """The one error a failed run raises: the user's mistake as it was, or a crash with the
        failing rank's log tail."""
        error = _read_error(self.folder / "error.json")
        if error and error.get("type") == "UsageError":
            return UsageError(error["message"])
        rank, why = _failed_rank(tail(self.log_path, 200))
        # torchrun itself killed by a signal (no failure summary): the workers' errors (a broken collective)
        # follow from it, whichever of them was written first
        launcher_killed = rc < 0 and rank is None
        if error and not launcher_killed and (rank is None or error.get("rank") == rank) \
                and not why.startswith("killed by"):
            rank, why = error.get("rank"), f"{error['type']}: {error['message']}"
        logs = ([self.folder / f"rank{rank}.log"] if rank is not None else []) + [self.log_path] + \
            sorted(self.folder.glob("rank*.log"))
        who = f"worker rank {rank}" if rank is not None else "the launcher"
        if not why and rc < 0:
            why = f"killed by {_signal_name(-rc)}"
        return WorkerFailed(f"{who} failed ({why or f'exit code {rc}'}); the workers were ended. "
                            f"{last_lines(*logs)}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _failures(log: str) -> list[tuple[int, str, int | None]]:
    """torchrun's failure summary as (rank, why, exit code), its root cause first."""
    if "Root Cause" in log:   # torchrun prints the others, then the first observed failure
        head, root = log.split("Root Cause", 1)
        log = root + "\n" + head
    found, rank = [], None
    for line in log.splitlines():
        text = line.strip()
        if text.startswith("rank") and ":" in text:
            try:
                rank = int(text.split(":", 1)[1].split()[0])
            except (ValueError, IndexError):
                rank = None
        elif text.startswith("exitcode") and rank is not None:
            value = text.split(":", 1)[1].strip()
            first = value.split()[0] if value.split() else ""
            code = int(first) if first.lstrip("-").isdigit() else None
            why = f"exit code {value}"
            if code is not None and code < 0:
                try:
                    why = f"killed by {signal.Signals(-code).name}"
                except ValueError:
                    pass
            if rank not in [r for r, _, _ in found]:
                found.append((rank, why, code))
            rank = None
    return found


def _failed_rank(log: str) -> tuple[int | None, str]:
    """The rank that failed first, and how. A rank killed by a signal other than the SIGTERM
    torchrun sends the survivors is the cause, whatever torchrun observed first (a survivor whose
    collective broke may be reported in the same instant)."""
    failures = _failures(log)
    for rank, why, code in failures:
        if code is not None and code < 0 and code != -signal.SIGTERM:
            return rank, why
    return (failures[0][0], failures[0][1]) if failures else (None, "")


def _read_error(path: Path) -> dict | None:
    """A worker's error.json, or None when there is none or it is not whole (a rank killed mid-write)."""
    try:
        error = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return error if isinstance(error, dict) and {"type", "message"} <= error.keys() else None
