"""`--devices`: the pieces of a launched run that need no worker (spec, data files, events,
failure reports, refusals, export's refusals).
tests/integration/multiprocess/test_launch_multiprocess.py runs workers."""
import json
import time

import numpy as np
import pandas as pd
import torch
import pytest

from llm_magics import api
from llm_magics.data import fingerprint
from llm_magics.engine.distributed import rank_slice
from llm_magics.errors import UsageError
from llm_magics.launch.events import EventReader, EventWriter
from llm_magics.launch.launcher import _failed_rank
from llm_magics.launch.spec import LaunchSpec, make_spec
from llm_magics.progress.events import Progress


def test_every_row_of_a_batch_goes_to_exactly_one_rank():
    for size in (1, 2, 7, 16):
        for world in (2, 3):
            batch = np.arange(100, 100 + size)
            parts = [rank_slice(batch, r, world) for r in range(world)]
            assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_rank_zero_events_replay_onto_the_kernels_progress(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "run-1", "finetune")
    writer.describe("--train all: 10 parameters")
    writer.start(total=4, unit="steps", epochs=2)
    writer.eval(val_loss=0.7)
    writer.advance(1, loss=np.float32(0.5))
    writer.set(lr=1e-3)
    with open(path, "a") as handle:
        handle.write('{"call": "advance", "args": [1]')   # a line the worker is still writing
    kernel = Progress([], "run-1", "finetune")
    reader = EventReader(path)
    assert reader.relay(kernel) == 5
    assert (kernel.state.total, kernel.state.unit, kernel.state.done) == (4, "steps", 1)
    assert kernel.state.metrics == {"val_loss": 0.7, "loss": 0.5, "lr": 1e-3}
    assert [m for _, m in kernel.state.history] == [{"val_loss": 0.7}, {"loss": 0.5}]
    with open(path, "a") as handle:
        handle.write(', "kwargs": {"loss": 0.25}}\n')
    writer.end("ok", test_accuracy=0.9)
    assert reader.relay(kernel) == 1 and kernel.state.done == 2
    assert reader.ended["args"] == ["ok"] and reader.ended["kwargs"] == {"test_accuracy": 0.9}
    assert kernel.state.status == "running"   # the launcher ends the view once the Result is back


def test_a_resumed_workers_count_reaches_the_kernels_bar_and_chart(tmp_path):
    """A resumed run starts at its checkpoint's step, which the loop sets without a call."""
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "run-1", "finetune")
    writer.start(total=30, unit="steps")
    writer.state.done = 20            # what TrainLoop.run does after resuming
    writer.advance(1, loss=0.5)
    writer.eval(val_loss=0.4)
    kernel = Progress([], "run-1", "finetune")
    EventReader(path).relay(kernel)
    assert kernel.state.done == 21 and kernel.state.total == 30
    assert [step for step, _ in kernel.state.history] == [21, 21]


def test_a_phase_replayed_late_keeps_the_workers_start_time(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"call": "start", "time": time.time() - 10, "args": [], "kwargs": {"total": 100}})
                    + "\n" + json.dumps({"call": "advance", "time": time.time(), "args": [5], "kwargs": {}}) + "\n")
    kernel = Progress()
    EventReader(path).relay(kernel)
    assert 9 < kernel.state.phase_elapsed < 12 and kernel.state.rate < 1   # 5 steps in 10 s, not in no time


def test_a_worker_stops_only_when_every_rank_agreed():
    writer = EventWriter(None)
    writer.request_stop()
    assert not writer.should_stop
    writer.agree_stop()
    assert writer.should_stop


def test_notebook_data_reaches_the_workers_as_parquet_with_the_same_fingerprint(tmp_path, demo):
    from llm_magics.methods.finetune import FinetuneOptions
    from llm_magics.settings import current
    train, test = demo
    rows = test.to_dict("records")
    o = FinetuneOptions(data="train_df", test=rows, devices=2)
    spec = make_spec("finetune", None, o, {"train_df": train}, "finetune-1", current(), tmp_path / "launch")
    path = spec.write(tmp_path / "launch")
    back = LaunchSpec.read(path)
    assert back.options["devices"] == 2 and back.options["out"] is None
    assert set(back.data_files) == {"data", "test"}
    for key, frame in (("data", train), ("test", pd.DataFrame(rows))):
        assert back.options[key].endswith(".parquet")
        assert fingerprint(pd.read_parquet(back.options[key])) == fingerprint(frame.reset_index(drop=True))
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))


def test_a_data_file_is_named_by_its_absolute_path(tmp_path, demo, monkeypatch):
    from llm_magics.methods.finetune import FinetuneOptions
    from llm_magics.settings import current
    monkeypatch.chdir(tmp_path)
    demo[0].to_csv(tmp_path / "train.csv", index=False)
    o = FinetuneOptions(data="train.csv", validation="glue:validation", devices=2)
    spec = make_spec("finetune", None, o, {}, "finetune-1", current(), tmp_path / "launch")
    assert spec.options["data"] == str(tmp_path / "train.csv") and spec.data_files == {}
    assert spec.options["validation"] == "glue:validation"   # a dataset name passes through


@pytest.mark.parametrize("extra, message", [
    ({"strategy": "deepspeed"}, "DeepSpeed"),
    ({"strategy": "deepspeed-zero2"}, r"needs DeepSpeed, which is not installed"),
    ({"nodes": 2}, "--master-addr"),
    ({"nodes": 2, "node_rank": 2, "master_addr": "10.0.0.1"}, "--node-rank 2"),
])
def test_launch_mistakes_are_one_line_before_any_worker_starts(tiny_bert, demo, extra, message, home, monkeypatch):
    monkeypatch.setattr("llm_magics.engine.deepspeed_loop.available", lambda: False)   # as without the extra
    with pytest.raises(UsageError, match=message):
        api.finetune(model=str(tiny_bert), data=demo[0], devices=2, **extra)
    assert not list((home.cache_dir / "runs").glob("*/launch"))   # nothing started, nothing left


def test_the_launch_options_are_on_every_training_method():
    from llm_magics.registry import registry
    for name in ("finetune", "lora"):
        help_text = registry().load(name).help()
        for flag in ("--devices", "--strategy", "--nodes", "--node-rank", "--master-addr"):
            assert flag in help_text, (name, flag)


TORCHRUN_FAILURE = """
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 27589)  (SIGTERM)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_06:23:53
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 27595)  (SIGKILL)
"""


def test_torchruns_report_names_the_rank_that_failed_first():
    assert _failed_rank(TORCHRUN_FAILURE) == (1, "killed by SIGKILL")
    assert _failed_rank("  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 5)") == (0, "exit code 1 (pid: 5)")
    # torchrun may observe the survivor (whose collective broke) first: the killed rank is still the cause
    swapped = """
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 27595)  (SIGKILL)
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 27589)
"""
    assert _failed_rank(swapped) == (1, "killed by SIGKILL")


def test_export_refuses_what_it_cannot_reproduce(shell, tiny_bert, demo, tmp_path):
    with pytest.raises(UsageError, match="no recorded run"):
        shell.run_line_magic("llm", f"export finetune-000000000000 {tmp_path / 'job'}")
    result = api.finetune(model=str(tiny_bert), data=demo[0], train="head", epochs=1, dtype="float32")
    with pytest.raises(UsageError, match="as a Python object"):
        shell.run_line_magic("llm", f"export {result.run_id} {tmp_path / 'job'}")
    assert not (tmp_path / "job").exists()   # nothing half-written


def test_export_writes_a_job_from_a_notebook_variable(shell, tiny_bert, demo, tmp_path):
    shell.user_ns["train_df"] = demo[0]
    shell.run_line_magic("finetune", f"--model {tiny_bert} --data train_df --train head --epochs 1 "
                                     "--dtype float32 --seed 3 --out r")
    run_id = shell.user_ns["r"].run_id
    shell.run_line_magic("llm", f"export {run_id} {tmp_path / 'job'}")
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["method"] == "finetune" and job["options"]["seed"] == 3 and job["options"]["train"] == "head"
    assert job["data_files"] == {"data": "data-data.parquet"} and job["options"]["data"] is None
    assert fingerprint(pd.read_parquet(tmp_path / "job" / "data-data.parquet")) == \
        fingerprint(demo[0].reset_index(drop=True))
    readme = (tmp_path / "job" / "README.md").read_text()
    assert "torchrun --standalone --nproc-per-node" in readme and "--nnodes M --node-rank R" in readme
    assert "main(Path(__file__)" in (tmp_path / "job" / "train.py").read_text()


def test_the_kernel_measures_no_device_memory_for_a_launched_run(tiny_bert, demo, monkeypatch):
    """The workers report their peak memory; the kernel's monitor must not touch CUDA for them."""
    from llm_magics import runner
    seen = []
    real = runner.MemoryMonitor
    monkeypatch.setattr(runner, "MemoryMonitor", lambda device=None: seen.append(device) or real(None))
    monkeypatch.setattr("llm_magics.engine.deepspeed_loop.available", lambda: False)   # refused: no worker starts
    with pytest.raises(UsageError, match="DeepSpeed"):
        api.finetune(model=str(tiny_bert), data=demo[0], devices=2, strategy="deepspeed")
    api.finetune(model=str(tiny_bert), data=demo[0], train="head", epochs=1, dtype="float32")
    assert seen[0] is None and seen[1] is not None


FAKE_AGENT = """import os, subprocess, sys, time
folder = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(os.path.join(folder, "rank0.pid"), "w").write(str(child.pid))
time.sleep(300)
"""


def fake_launcher(tmp_path, **kwargs):
    """A Launcher whose 'torchrun' is a sleeper with a worker in a session of its own, as torchrun's are."""
    import sys

    from llm_magics.launch.launcher import Launcher

    class Fake(Launcher):
        def command(self):
            return [sys.executable, "-c", FAKE_AGENT, str(self.folder)]
    launcher = Fake(tmp_path, tmp_path / "spec.json", 2, poll=0.05, **kwargs)
    launcher.start()
    while not (tmp_path / "rank0.pid").exists():
        time.sleep(0.05)
    worker = int((tmp_path / "rank0.pid").read_text())
    return launcher, [launcher.proc.pid, worker]


def gone(pids, within: float = 10.0) -> bool:
    import psutil
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_a_silent_run_is_ended_as_stuck_with_every_process(tmp_path):
    from llm_magics.launch.launcher import WorkerFailed
    launcher, pids = fake_launcher(tmp_path, silence_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(WorkerFailed, match="no sign of life"):
        launcher.follow(Progress())
    assert time.monotonic() - started < 10 and gone(pids)


def test_workers_that_ignore_stop_are_ended_after_the_grace_period(tmp_path):
    from llm_magics.launch.launcher import WorkerFailed
    launcher, pids = fake_launcher(tmp_path, stop_grace=1.0, silence_timeout=None)
    progress = Progress()
    progress.request_stop()
    with pytest.raises(WorkerFailed, match="did not stop within 1 s"):
        launcher.follow(progress)
    assert (tmp_path / "STOP").exists() and gone(pids)


def test_commands_that_cannot_launch_refuse_devices_rather_than_ignore_them(shell, tmp_path):
    # (%rlhf reward and dpo|kto|orpo take --devices: tests/integration/multiprocess/test_rlhf_launch.py)
    with pytest.raises(UsageError, match="%rlhf ppo runs in one process: drop --devices/--nodes .they take %rlhf "
                                         "reward"):
        shell.run_line_magic("rlhf", f"ppo --prompts {tmp_path / 'prompts.jsonl'} --devices 2")
    with pytest.raises(UsageError, match="%rlhf grpo runs in one process"):
        shell.run_line_magic("rlhf", f"grpo --prompts {tmp_path / 'prompts.jsonl'} --devices 2")
    with pytest.raises(UsageError, match="^%rlhf grpo: unknown option --nodes"):   # declared only where read
        shell.run_line_magic("rlhf", f"grpo --prompts {tmp_path / 'prompts.jsonl'} --nodes 2 --master-addr h")


@pytest.mark.parametrize("train", ["head", "last:1"])
def test_the_kernel_rebuilds_a_workers_model_from_its_weights(tiny_bert, demo, tmp_path, train):
    """What a launched Result does on first .predict: the method's own model, on the CPU, with the
    weights rank 0 wrote (here written by a one-process run)."""
    from llm_magics.engine import checkpoint
    from llm_magics.launch.result import rebuild_model
    from llm_magics.methods.finetune import FinetuneMethod, FinetuneOptions
    from llm_magics.runner import RunContext
    from llm_magics.settings import current
    train_df, test_df = demo
    result = api.finetune(model=str(tiny_bert), data=train_df, train=train, epochs=1, lr=1e-2, dtype="float32")
    checkpoint.save_weights(result._model, tmp_path / "final")
    o = FinetuneOptions(model=str(tiny_bert), data=train_df, train=train, epochs=1, lr=1e-2, dtype="float32")
    spec = LaunchSpec("finetune", None, "finetune-x", {"data": None}, {})
    spec.options = {}
    model, tokenizer = rebuild_model(FinetuneMethod(), o, spec, RunContext("finetune-x", "finetune", current()),
                                     tmp_path / "final")
    texts = test_df["text"].head(6).tolist()
    from llm_magics.tasks.classify import predict_logits
    rebuilt = predict_logits(model, tokenizer, texts, o.max_length, torch.device("cpu"))
    assert torch.allclose(rebuilt, result.logits(texts), atol=1e-4)


def test_a_training_method_runs_the_loop_its_context_names(tiny_bert, demo):
    """The seam a launched worker uses (its context's `train_loop`: engine/distributed.py)."""
    from llm_magics.engine.loop import TrainLoop
    from llm_magics.methods.finetune import FinetuneMethod, FinetuneOptions
    from llm_magics.runner import RunContext
    from llm_magics.settings import current
    made = []

    class Recording(TrainLoop):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)
    ctx = RunContext("finetune-seam", "finetune", current())
    ctx.train_loop = Recording
    o = FinetuneOptions(model=str(tiny_bert), data=demo[0], train="head", epochs=1, dtype="float32")
    FinetuneMethod().run(o, ctx)
    assert len(made) == 1
