"""`%llm export`: the job carries the data the run trained on or nothing,
the folder is written whole or not at all, job.json names no path of this machine the user did not give, and a
target that cannot be a job folder is one line."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from llm_magics.errors import UsageError
from llm_magics.jobs.export import export
from llm_magics.jobs.job import job_values
from llm_magics.safe_io import verify_manifest

RUN = "--train head --epochs 1 --batch-size 16 --dtype float32 --seed 3"


def one_line(caught) -> str:
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def run_on_df(shell, tiny_bert, demo):
    shell.user_ns["df"] = demo[0].copy()
    shell.run_line_magic("finetune", f"--model {tiny_bert} --data df {RUN} --out r")
    return shell.user_ns["r"].run_id


def test_export_refuses_when_the_variable_changed_or_is_gone(shell, run_on_df, demo, tmp_path):
    job = tmp_path / "job"
    shell.user_ns["df"] = demo[0].sample(120, random_state=1)   # other rows under the same name now
    with pytest.raises(UsageError, match=r"trained on other data than --data 'df' holds now") as caught:
        shell.run_line_magic("llm", f"export {run_on_df} {job}")
    assert "run it again" in one_line(caught) and not job.exists()
    del shell.user_ns["df"]
    with pytest.raises(UsageError, match=r"--data 'df'.*cannot be read here as the run read it.*no variable named 'df'"
                       ) as caught:
        shell.run_line_magic("llm", f"export {run_on_df} {job}")
    assert "run it again" in one_line(caught) and not job.exists()
    shell.user_ns["df"] = demo[0].copy()   # the data the run used, back under its name
    shell.run_line_magic("llm", f"export {run_on_df} {job}")
    assert verify_manifest(job, required=True) == []
    assert json.loads((job / "job.json").read_text())["data_files"] == {"data": "data-data.parquet"}


def test_a_file_that_changed_since_the_run_is_refused(shell, tiny_bert, demo, tmp_path):
    data = tmp_path / "train.csv"
    demo[0].to_csv(data, index=False)
    shell.run_line_magic("finetune", f"--model {tiny_bert} --data {data} {RUN} --out r")
    demo[0].head(100).to_csv(data, index=False)
    with pytest.raises(UsageError, match="trained on other data than --data"):
        shell.run_line_magic("llm", f"export {shell.user_ns['r'].run_id} {tmp_path / 'job'}")
    assert not (tmp_path / "job").exists()


def test_job_json_holds_no_absolute_path_the_user_did_not_give(shell, tiny_bert, demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_bert.parent)
    shell.user_ns["df"] = demo[0]
    shell.run_line_magic("finetune", f"--model {tiny_bert.name} --data df {RUN} --out r")
    job = tmp_path / "jobs" / "job"
    shell.run_line_magic("llm", f"export {shell.user_ns['r'].run_id} {job}")
    text = (job / "job.json").read_text()
    assert str(tiny_bert.parent) not in text and str(tmp_path) not in text
    monkeypatch.chdir(tmp_path)   # the job finds the model from its own folder, wherever it is run from
    _, values = job_values(job)
    assert values["model"] == str(tiny_bert.resolve())


@pytest.mark.parametrize("where", ["file", "proc", "long"])
def test_a_target_that_cannot_be_a_job_folder_is_one_line(shell, run_on_df, tmp_path, where):
    target = {"file": tmp_path / "taken.txt", "proc": "/proc/x", "long": tmp_path / ("n" * 300)}[where]
    if where == "file":
        target.write_text("mine")
    why = {"file": "%llm export: .*taken.txt is a file; name a new folder", "proc": "%llm export: cannot write /proc/x",
           "long": "the file name n+… is 300 characters long"}[where]
    with pytest.raises(UsageError, match=why) as caught:
        shell.run_line_magic("llm", f"export {run_on_df} {target}")
    one_line(caught)
    with pytest.raises(UsageError, match=why):   # the API, without the magic's option check
        export(run_on_df, target)
    assert where != "file" or (target.read_text() == "mine")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == (["taken.txt"] if where == "file" else [])


EXPORT = """import sys
from llm_magics.jobs.export import export
print("go", flush=True)
export(sys.argv[1], sys.argv[2])
print("done", flush=True)
"""


def test_a_killed_export_leaves_a_whole_job_or_none_and_exporting_again_works(shell, tiny_bert, demo, tmp_path):
    data = tmp_path / "train.csv"
    pd.concat([demo[0]] * 40, ignore_index=True).to_csv(data, index=False)   # a copy and a check that take a while
    shell.run_line_magic("finetune", f"--model {tiny_bert} --data {data} --train head --epochs 1 --batch-size 256 "
                                     "--dtype float32 --out r")
    run_id, job = shell.user_ns["r"].run_id, tmp_path / "out" / "job"

    def start():
        proc = subprocess.Popen([sys.executable, "-c", EXPORT, run_id, str(job)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.stdout.readline() == "go\n"
        return proc, time.monotonic()

    proc, began = start()
    assert proc.stdout.readline() == "done\n" and proc.wait(timeout=60) == 0
    took = time.monotonic() - began
    outcomes = []
    rng = random.Random(0)
    for _ in range(10):
        if job.exists():
            import shutil
            shutil.rmtree(job)
        proc, _ = start()
        time.sleep(rng.uniform(0, took))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        whole = job.exists()
        if whole:   # a job is there only whole: every file it lists, as written
            assert verify_manifest(job, required=True) == [] and (job / "job.json").is_file()
        outcomes.append(whole)
    shell.run_line_magic("llm", f"export {run_id} {tmp_path / 'out' / 'again'}")
    if job.exists():
        import shutil
        shutil.rmtree(job)
    shell.run_line_magic("llm", f"export {run_id} {job}")   # what a killed export left beside it is cleared
    assert verify_manifest(job, required=True) == []
    assert sorted(p.name for p in job.parent.iterdir()) == ["again", "job"], outcomes
