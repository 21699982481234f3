"""The launcher's hygiene: a failure's message ends with log lines or says there were none,
the other ranks' scratch folders go with the run, and workers get only the environment they need (a notebook's
secrets stay in the kernel)."""
import json
import os
import signal
import sys
import time

import pytest

from llm_magics import api
from llm_magics.launch.launcher import Launcher, WorkerFailed

from tests.integration.multiprocess.test_launch_multiprocess import (  # noqa: F401  (the leftover check)
    no_leftovers, run_processes, wait_for)

DUMP_ENV = "import json, os, sys; json.dump(sorted(os.environ), open(sys.argv[1], 'w'))"


class Scripted(Launcher):
    """A Launcher whose 'torchrun' is a short Python script (its first argument: the launch folder)."""
    script = ""

    def command(self):
        return [sys.executable, "-c", self.script, str(self.folder / "out.json")]


def launched(tmp_path, script: str) -> tuple[Launcher, int]:
    folder = tmp_path / "run" / "launch"
    folder.mkdir(parents=True)
    launcher = type("Run", (Scripted,), {"script": script})(folder, folder / "spec.json", 2, poll=0.05,
                                                           silence_timeout=None)
    launcher.start()
    from llm_magics.progress.events import Progress
    return launcher, launcher.follow(Progress())


def test_workers_get_what_they_need_of_the_environment_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("LLM_MAGICS_WORKER", "1")   # the kernel's own mark never reaches a worker
    launcher, rc = launched(tmp_path, DUMP_ENV)
    assert rc == 0
    keys = set(json.loads((launcher.folder / "out.json").read_text()))
    assert not keys & {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "LLM_MAGICS_WORKER"}
    assert {"PATH", "HOME", "LLM_MAGICS_HOME", "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
            "PYTHONUNBUFFERED"} <= keys


def test_a_failure_with_empty_logs_says_so_and_one_with_lines_shows_them(tmp_path):
    launcher, rc = launched(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    message = str(launcher.failure(rc))
    assert message.startswith("the launcher failed (killed by SIGKILL)")
    assert not message.rstrip().endswith(":") and "No log holds a line (launcher.log" in message
    (launcher.folder / "rank0.log").write_text("loading the model\nTraceback: boom\n\n")
    message = str(launcher.failure(rc))
    assert message.endswith(f"Last lines of {launcher.folder / 'rank0.log'}:\nloading the model\nTraceback: boom")
    # A worker whose collective broke when the launcher died may write its error first: the launcher is the cause.
    (launcher.folder / "error.json").write_text(json.dumps(
        {"type": "RuntimeError", "message": "gloo: Read error: Connection reset by peer", "rank": 0}))
    assert str(launcher.failure(rc)).startswith("the launcher failed (killed by SIGKILL)")


def test_the_other_ranks_scratch_goes_when_the_run_ends(tmp_path):
    run = tmp_path / "run"
    (run / ".rank1" / "checkpoint-best").mkdir(parents=True)
    (run / "checkpoint-last").mkdir()   # rank 0's: what --resume reads, kept
    launcher, rc = launched(tmp_path, "import sys; sys.exit(1)")
    assert rc == 1 and not (run / ".rank1").exists() and (run / "checkpoint-last").is_dir()


@pytest.mark.multiprocess
def test_a_killed_launcher_leaves_no_scratch_and_its_workers_never_saw_a_secret(tiny_bert, separable, home,
                                                                                 monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    frame, _, _ = separable
    handle = api.finetune(model=str(tiny_bert), data=frame, train="all", lr=1e-3, epochs=50, batch_size=16,
                          eval_every=2, dtype="float32", devices=2, bg=True)
    run = home.cache_dir / "runs" / handle.run_id
    try:
        wait_for(handle, 3)   # past an evaluation: rank 1 has kept its best weights in its scratch folder
        assert (run / ".rank1").is_dir()
    except BaseException:
        handle.stop()
        raise
    worker = int((run / "launch" / "rank1.pid").read_text())
    environ = dict(item.split("=", 1) for item in open(f"/proc/{worker}/environ").read().split("\0") if "=" in item)
    assert "OPENAI_API_KEY" not in environ and environ["LLM_MAGICS_HOME"] == os.environ["LLM_MAGICS_HOME"]
    agent = next(pid for pid, line in run_processes() if "torch.distributed.run" in line)
    os.kill(agent, signal.SIGKILL)
    with pytest.raises(WorkerFailed) as caught:
        handle.result(timeout=60)
    message = str(caught.value)
    assert "killed by SIGKILL" in message and not message.rstrip().endswith(":"), message
    end = time.monotonic() + 30
    while run_processes() and time.monotonic() < end:
        time.sleep(0.2)
    assert not (run / ".rank1").exists()
