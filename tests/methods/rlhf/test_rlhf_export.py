"""`%llm export` of `%rlhf` runs: the job re-runs the same subcommand, options, data files and seed from a shell.

Tolerances, the exported job against the notebook run it reproduces (tiny models, dropout off):
- `reward` (the job in one process, `python train.py`): the same held-out pairs (the data fingerprint is equal),
  validation/test loss, margin and accuracy within 1e-4 (measured: equal to the last digit — the same
  computation, differing only in threads).
- `dpo --method lora` (the job on two processes, `torchrun --nproc-per-node 2 train.py`, against the notebook's
  one): TRL's held-out implicit margin and chosen/rejected shifts within 1e-4, the last training loss within 1e-4
  (measured in tests/integration/multiprocess/test_rlhf_launch.py: 2 vs 1 process 1e-7 apart).
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest

from llm_magics import api
from llm_magics.adapters import hub
from llm_magics.errors import UsageError

from tests.integration.multiprocess import test_rlhf_launch

# the dropout-free tiny models of the launch tests, as this module's fixtures too
bert, llama = test_rlhf_launch.bert, test_rlhf_launch.llama

TOLERANCE = 1e-4


def word_pairs(pos, neg, n, seed=0, lengths=(3, 6)):
    rng = random.Random(seed)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(rng.randint(*lengths)))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg)} for _ in range(n)])


@pytest.fixture(autouse=True)
def no_adapters():
    hub().release()
    yield
    hub().release()


def run_job(folder, *launcher):
    """The job's command from a shell, in its folder; (completed process, processes left in the folder)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(Path(folder).parent))   # torchrun's log folder, not /tmp
    done = subprocess.run([sys.executable, *launcher, "train.py"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=400)
    left = []
    for p in psutil.process_iter(["cwd", "status"]):
        try:
            if p.info["cwd"] == str(folder) and p.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.Error:
            pass
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, left


def job_record(store, folder):
    rows = [r for r in store.list() if (r.get("artifacts") or {}).get("job") == str(folder)]
    assert len(rows) == 1, [r["run_id"] for r in store.list()]
    return rows[0]


def test_an_exported_reward_run_reproduces_the_notebook_run_from_a_shell(shell, bert, separable, store, tmp_path):
    _, pos, neg = separable
    shell.user_ns["pairs"] = word_pairs(pos, neg, 120)
    shell.run_line_magic("rlhf", f"reward --model {bert} --data pairs --epochs 2 --batch-size 16 --lr 1e-3 "
                                 "--dropout 0 --dtype float32 --seed 3 --out rm")
    rm = shell.user_ns["rm"]
    job = tmp_path / "job"
    shell.run_line_magic("llm", f"export {rm.run_id} {job}")
    spec = json.loads((job / "job.json").read_text())
    assert (spec["method"], spec["command"]) == ("rlhf", "reward")
    assert spec["options"]["seed"] == 3 and spec["options"]["data"] is None
    assert spec["data_files"] == {"data": "data-data.parquet"}   # the pairs as Parquet, nothing pickled
    assert pd.read_parquet(job / "data-data.parquet").equals(shell.user_ns["pairs"])
    assert not list(job.glob("*.pkl")) and "torchrun --standalone" in (job / "README.md").read_text()

    done, left = run_job(job)
    assert left == []
    row = job_record(store, job)
    assert (row["method"], row["command"]) == ("rlhf", "reward") and row["run_id"] != rm.run_id
    assert row["data_fingerprint"] == rm.data_fingerprint   # the same train/validation/test pairs
    for key in ("val_loss", "val_accuracy", "test_loss", "test_accuracy", "test_margin", "train_loss"):
        assert row["metrics"][key] == pytest.approx(rm.metrics[key], abs=TOLERANCE), key
    assert row["metrics"]["steps"] == rm.metrics["steps"]
    # the job's reward model scores as the notebook's does
    from llm_magics.methods.rlhf.results import load_reward
    texts = ["Review: " + " ".join(pos[:4]), "Review: " + " ".join(neg[:4])]
    assert load_reward(row["run_id"]).score(texts) == pytest.approx(rm.score(texts), abs=1e-3)
    assert {rm.run_id, row["run_id"]} <= set(api.compare().table["run_id"])


@pytest.mark.multiprocess
def test_an_exported_dpo_lora_run_reproduces_the_notebook_run_on_two_processes(shell, llama, separable, store,
                                                                               tmp_path):
    _, pos, neg = separable
    shell.user_ns["pairs"] = word_pairs(pos, neg, 64)
    shell.user_ns["held_out"] = word_pairs(pos, neg, 16, seed=1)
    # fp32: one process and two are compared to TOLERANCE; a bf16 base rounds differently for each batch shape.
    shell.run_line_magic("rlhf", f"dpo --policy {llama} --data pairs --test held_out --method lora --lr 5e-3 "
                                 "--steps 4 --batch-size 8 --seed 0 --dtype float32 --name dpo_nb --out d")
    d = shell.user_ns["d"]
    assert d.metrics["steps"] == 4
    job = tmp_path / "job"
    shell.run_line_magic("llm", f"export {d.run_id} {job}")
    spec = json.loads((job / "job.json").read_text())
    assert (spec["method"], spec["command"]) == ("rlhf", "dpo") and spec["options"]["method"] == "lora"
    assert spec["data_files"] == {"data": "data-data.parquet", "test": "data-test.parquet"}
    assert pd.read_parquet(job / "data-test.parquet").equals(shell.user_ns["held_out"])

    done, left = run_job(job, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert left == []
    row = job_record(store, job)
    assert (row["method"], row["command"]) == ("rlhf", "dpo") and row["device"].endswith("×2 (ddp)")
    assert row["data_fingerprint"] == d.data_fingerprint
    for key in ("test_margin", "test_chosen_shift", "test_rejected_shift", "train_loss"):
        assert row["metrics"][key] == pytest.approx(d.metrics[key], abs=TOLERANCE), key
    assert row["metrics"]["steps"] == 4 and row["metrics"]["test_margin"] != 0.0
    assert {d.run_id, row["run_id"]} <= set(api.compare().table["run_id"])


def test_what_cannot_be_exported_is_refused_in_one_line(shell, llama, store, tmp_path):
    def reward(prompts, completions):
        return [float(len(c)) for c in completions]
    shell.user_ns["reward"] = reward
    shell.user_ns["prompts"] = ["Review: the film", "Review: the acting", "Review: it", "Review: we"]
    shell.run_line_magic("rlhf", f"ppo --policy {llama} --reward reward --prompts prompts --steps 1 --batch-size 4 "
                                 "--minibatch-size 4 --max-new-tokens 3 --out p")
    p = shell.user_ns["p"]
    shell.run_line_magic("rlhf", f"eval {p.run_id} --reward reward --prompts prompts --max-new-tokens 3 --out e")
    for run, why in ((p.run_id, r"run \S+'s --reward is a Python callable \(reward\), which a job cannot carry"),
                     (shell.user_ns["e"].run_id, r"%rlhf eval runs score a policy and train nothing")):
        with pytest.raises(UsageError, match=why) as caught:
            shell.run_line_magic("llm", f"export {run} {tmp_path / 'job'}")
        assert "\n" not in str(caught.value)
        assert not (tmp_path / "job").exists()
    from llm_magics.jobs.export import export   # from outside the session: the variable is not there
    with pytest.raises(UsageError, match=r"--reward 'reward' is no longer a variable, reward-model run or folder"):
        export(p.run_id, tmp_path / "job")
    assert not (tmp_path / "job").exists()
    # collect records no run; a record that says so anyway is refused by name
    store.record({**store.get(p.run_id), "run_id": "rlhf-collect0001", "command": "collect"})
    with pytest.raises(UsageError, match="%rlhf collect asks a person in a widget"):
        shell.run_line_magic("llm", f"export rlhf-collect0001 {tmp_path / 'job'}")
    assert not (tmp_path / "job").exists()


def test_an_exported_ppo_run_against_a_reward_model_reproduces_it_in_one_process(shell, bert, llama, separable,
                                                                                 store, tmp_path, monkeypatch):
    """PPO's reward given as a %rlhf reward model: its folder travels with the job; the job runs in one process
    (PPO has no --devices) and reproduces the notebook run (same seed: the same rollouts; within 1e-4)."""
    _, pos, neg = separable
    shell.user_ns["pairs"] = word_pairs(pos, neg, 60)
    shell.user_ns["openings"] = pd.DataFrame({"prompt": ["Review: the film", "Review: the acting", "Review: it",
                                                         "Review: we"]})
    shell.run_line_magic("rlhf", f"reward --model {bert} --data pairs --epochs 1 --dtype float32 --out rm")
    shell.run_line_magic("rlhf", f"ppo --policy {llama} --reward rm --prompts openings --steps 2 --batch-size 4 "
                                 "--minibatch-size 4 --max-new-tokens 4 --seed 5 --out p")
    p = shell.user_ns["p"]
    job = tmp_path / "job"
    shell.run_line_magic("llm", f"export {p.run_id} {job}")
    spec = json.loads((job / "job.json").read_text())
    assert (spec["method"], spec["command"]) == ("rlhf", "ppo") and spec["options"]["seed"] == 5
    assert spec["data_files"] == {"reward": "reward_model", "prompts": "prompts.parquet"}
    assert (job / "reward_model").is_dir() and not (job / "accelerate.yaml").exists()
    assert pd.read_parquet(job / "prompts.parquet")["prompt"].tolist() == shell.user_ns["openings"]["prompt"].tolist()
    readme, script = (job / "README.md").read_text(), (job / "train.py").read_text()
    assert "python train.py" in readme and "torchrun" not in readme + script

    # under torchrun the job refuses in one line: PPO runs in one process
    from llm_magics.jobs.job import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(job) == 3
    monkeypatch.delenv("WORLD_SIZE")

    done, left = run_job(job)
    assert left == []
    row = job_record(store, job)
    assert (row["method"], row["command"]) == ("rlhf", "ppo") and row["metrics"]["steps"] == p.metrics["steps"] == 2
    compared = [key for key, value in p.metrics.items() if isinstance(value, float) and key in row["metrics"]]
    assert {"reward_first3", "reward_last3", "kl_mean"} <= set(compared), compared
    for key in compared:
        assert row["metrics"][key] == pytest.approx(p.metrics[key], abs=TOLERANCE, nan_ok=True), key
    assert {p.run_id, row["run_id"]} <= set(api.compare(metric="reward_last3").table["run_id"])


def test_an_exported_grpo_run_whose_reward_is_a_run_id_reproduces_it(shell, bert, llama, separable, store,
                                                                      tmp_path):
    """--reward by the reward run's id (not a variable): export finds its folder through the run store."""
    _, pos, neg = separable
    rm = api.rlhf.reward(model=str(bert), data=word_pairs(pos, neg, 60), epochs=1, dtype="float32")
    shell.user_ns["openings"] = ["Review: the film", "Review: the acting", "Review: it", "Review: we"]
    shell.run_line_magic("rlhf", f"grpo --policy {llama} --reward {rm.run_id} --prompts openings --steps 2 "
                                 "--batch-size 4 --method lora --out g")
    g = shell.user_ns["g"]
    job = tmp_path / "job"
    shell.run_line_magic("llm", f"export {g.run_id} {job}")
    assert json.loads((job / "job.json").read_text())["data_files"] == {"reward": "reward_model",
                                                                          "prompts": "prompts.parquet"}
    done, left = run_job(job)
    assert left == []
    row = job_record(store, job)
    assert (row["method"], row["command"]) == ("rlhf", "grpo") and row["metrics"]["steps"] == 2
    for key in ("reward_first3", "reward_last3"):   # measured: equal
        assert row["metrics"][key] == pytest.approx(g.metrics[key], abs=TOLERANCE), key
