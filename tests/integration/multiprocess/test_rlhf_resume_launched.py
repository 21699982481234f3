"""`%rlhf reward|dpo --devices 2` killed mid-way (SIGKILL of worker rank 1, after the first checkpoint: our loop's
checkpoint-last for reward, TRL's first sealed one for DPO LoRA) and continued with `--resume last --devices 2`
end where the uninterrupted 2-process run ends."""
import os
import signal
import time

import pytest

from llm_magics import api
from llm_magics.launch.launcher import WorkerFailed
from llm_magics.preference.trl_bridge import last_sealed_checkpoint

from tests.integration.multiprocess.test_launch_multiprocess import (  # noqa: F401  (the autouse fixture, its check)
    no_leftovers, run_processes)
from tests.integration.multiprocess.test_rlhf_launch import bert, llama, word_pairs  # noqa: F401  (the fixtures)

pytestmark = pytest.mark.multiprocess


def kill_rank1_once(handle, home, saved) -> None:
    """Wait (generously) until `saved(run folder)` says a checkpoint is whole, then SIGKILL worker rank 1."""
    run_dir = home.cache_dir / "runs" / handle.run_id
    start = time.monotonic()
    while not saved(run_dir):
        assert not handle.done, "the run ended before its first checkpoint"
        assert time.monotonic() - start < 300, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(int((run_dir / "launch" / "rank1.pid").read_text()), signal.SIGKILL)
    with pytest.raises(WorkerFailed, match="killed by SIGKILL"):
        handle.result(timeout=120)


def test_reward_on_two_processes_killed_mid_way_resumes_where_the_uninterrupted_run_ends(
        bert, separable, home):  # noqa: F811
    from llm_magics.engine import checkpoint
    _, pos, neg = separable
    args = dict(model=str(bert), data=word_pairs(pos, neg, 200), train="full", lr=1e-3, epochs=3, batch_size=16,
                eval_every=3, seed=0, dtype="float32", devices=2)
    straight = api.rlhf.reward(**args)
    handle = api.rlhf.reward(**args, bg=True)
    kill_rank1_once(handle, home, lambda run_dir: checkpoint.exists(run_dir / "checkpoint-last"))
    resumed = api.rlhf.reward(**args, resume="last")
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"]
    killed = home.cache_dir / "runs" / handle.run_id / "checkpoint-last"
    assert checkpoint.continued_by(killed) == resumed.run_id   # it continued the killed run, not a fresh one
    for key in ("val_accuracy", "val_margin", "test_accuracy", "test_margin", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    assert run_processes() == []


def test_dpo_lora_on_two_processes_killed_mid_way_resumes_where_the_uninterrupted_run_ends(
        llama, separable, home):  # noqa: F811
    _, pos, neg = separable
    args = dict(policy=str(llama), data=word_pairs(pos, neg, 120), method="lora", lr=5e-3, steps=30, batch_size=8,
                seed=0, dtype="float32", devices=2)
    straight = api.rlhf.dpo(**args)
    handle = api.rlhf.dpo(**args, bg=True)
    run_dir = home.cache_dir / "runs" / handle.run_id
    kill_rank1_once(handle, home, lambda run_dir: last_sealed_checkpoint(run_dir / "trl") is not None)  # every 3 steps
    kept = last_sealed_checkpoint(run_dir / "trl")
    assert kept is not None and int(kept.name.split("-")[1]) < 30
    resumed = api.rlhf.dpo(**args, resume="last")
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"] == 30
    assert any(f"at its step {kept.name.split('-')[1]}" in note for note in resumed.notes), resumed.notes
    for key in ("test_margin", "test_accuracy", "test_chosen_shift", "test_rejected_shift", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    assert run_processes() == []
