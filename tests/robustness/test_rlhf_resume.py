"""`%rlhf` runs killed mid-way (SIGKILL: no cleanup runs) and continued with --resume end where the run that
was never interrupted ends, without redoing the steps the last checkpoint holds: the reward model on our loop,
DPO with a LoRA adapter through TRL's own checkpoints."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_magics import api
from llm_magics.errors import UsageError

from tests.methods.rlhf.test_rlhf_reward import word_pairs

# The child runs one %rlhf command and parks itself (a marker file, then a long sleep) right after optimizer
# step BLOCK, a few steps past its last checkpoint; the test then kills it with SIGKILL.
CHILD = """
import json, sys, time
from pathlib import Path
command, kwargs, block, marker = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])

def park():
    marker.write_text("parked")
    time.sleep(3600)

if command == "reward":
    from llm_magics.engine.loop import TrainLoop
    real, done = TrainLoop._optimizer_step, [0]
    def step(self):
        real(self)
        done[0] += 1
        if done[0] == block:
            park()
    TrainLoop._optimizer_step = step
else:
    from llm_magics.preference import trl_bridge
    from llm_magics.preference.trl_bridge import ProgressCallback
    trl_bridge.SAVE_GAP_S = 0   # a tiny run takes seconds: every tenth of it checkpoints (as the fixture below)
    real_end = ProgressCallback.on_step_end
    def on_step_end(self, args, state, control, **kw):
        out = real_end(self, args, state, control, **kw)
        if state.global_step == block:
            park()
        return out
    ProgressCallback.on_step_end = on_step_end
from llm_magics import api
if "reward" in kwargs:   # a callable cannot travel as JSON: this module's, by name
    from tests.robustness import test_rlhf_resume
    kwargs["reward"] = getattr(test_rlhf_resume, kwargs["reward"])
getattr(api.rlhf, command)(**kwargs)
"""


@pytest.fixture(autouse=True)
def checkpoint_every_tenth(monkeypatch):
    """A tiny run takes seconds: TRL's checkpoints every tenth of it, without the one-a-minute floor."""
    from llm_magics.preference import trl_bridge
    monkeypatch.setattr(trl_bridge, "SAVE_GAP_S", 0)


def killed_mid_way(tmp_path: Path, command: str, kwargs: dict, block: int) -> None:
    """Run `command` in a child process until it parks after step `block`, then SIGKILL it."""
    marker = tmp_path / f"{command}.parked"
    child = subprocess.Popen([sys.executable, "-c", CHILD, command, json.dumps(kwargs), str(block), str(marker)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600   # generous: 2 shared cores
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before step {block}: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child never reached its step"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()


def pairs_file(tmp_path: Path, separable, n: int) -> str:
    _, pos, neg = separable
    path = tmp_path / "pairs.jsonl"
    word_pairs(pos, neg, n).to_json(path, orient="records", lines=True)
    return str(path)


def test_reward_killed_mid_way_resumes_where_the_uninterrupted_run_ends(tiny_bert, separable, store, tmp_path,
                                                                      monkeypatch):
    kwargs = dict(model=str(tiny_bert), data=pairs_file(tmp_path, separable, 200), train="full", lr=1e-3,
                  epochs=2, batch_size=16, eval_every=4, dtype="float32", seed=0)
    straight = api.rlhf.reward(**kwargs)
    killed_mid_way(tmp_path, "reward", kwargs, block=10)   # checkpoints at steps 4 and 8; killed after 10
    from llm_magics.engine.loop import TrainLoop
    real, steps = TrainLoop._optimizer_step, []
    monkeypatch.setattr(TrainLoop, "_optimizer_step", lambda self: (steps.append(1), real(self)))
    resumed = api.rlhf.reward(**kwargs, resume="last")
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"] == 18
    assert len(steps) == straight.metrics["steps"] - 8   # from the checkpoint of step 8, not from step 0
    for key in ("val_accuracy", "val_margin", "test_accuracy", "test_margin", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    texts = ["Review: " + w for w in ("good fine", "bad awful", "alpha beta")]
    assert resumed.score(texts) == pytest.approx(straight.score(texts), abs=1e-4)
    with pytest.raises(UsageError, match="no stopped or crashed"):   # a checkpoint is resumed once
        api.rlhf.reward(**kwargs, resume="last")


@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo"])
def test_offline_lora_killed_mid_way_resumes_where_the_uninterrupted_run_ends(tiny_llama, separable, tmp_path, monkeypatch,
                                                                            kind):
    kwargs = dict(policy=str(tiny_llama), data=pairs_file(tmp_path, separable, 120), method="lora", lr=5e-3,
                  steps=20, batch_size=8, dtype="float32", seed=0)
    run = getattr(api.rlhf, kind)
    straight = run(**kwargs)
    killed_mid_way(tmp_path, kind, kwargs, block=13)   # TRL's checkpoints every 2 steps: the last at 12
    from llm_magics.settings import current
    killed = next(p.parent.parent.name for p in current().subdir("runs").glob("*/trl/checkpoint-12"))
    other = "kto" if kind == "dpo" else "dpo"
    with pytest.raises(UsageError, match=f"is not a %rlhf {other} run"):
        getattr(api.rlhf, other)(**kwargs, resume=killed)
    with pytest.raises(UsageError, match="options differ.*--lr"):
        run(**{**kwargs, "lr": 1e-3}, resume=killed)
    from llm_magics.preference.trl_bridge import ProgressCallback
    real, steps = ProgressCallback.on_step_end, []
    monkeypatch.setattr(ProgressCallback, "on_step_end", lambda self, *a, **k: (steps.append(1), real(self, *a, **k))[1])
    resumed = run(**kwargs, resume="last")
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"] == 20
    assert len(steps) == 20 - 12   # from the checkpoint of step 12, not from step 0
    for key in ("test_margin", "test_accuracy", "test_chosen_shift", "test_rejected_shift", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    with pytest.raises(UsageError, match=f"no stopped or crashed %rlhf {kind} run"):   # a checkpoint is resumed once
        run(**kwargs, resume="last")
    with pytest.raises(UsageError, match="already continued"):
        run(**kwargs, resume=killed)
    continued = current().subdir("runs") / killed / "trl" / "checkpoint-12"
    assert not (continued / "optimizer.pt").exists() and (continued / "adapter_model.safetensors").exists()
    api.lora.unload(name=straight.adapter)
    api.lora.unload(name=resumed.adapter)


@pytest.mark.parametrize("command", ["reward", "dpo", "kto", "orpo", "grpo", "rloo"])
@pytest.mark.parametrize("resume, message", [("last", "no stopped or crashed"),
                                             ("rlhf-000000", "no resumable checkpoint"),
                                             ("../elsewhere", "is not a run id or 'last'")])
def test_resume_without_a_checkpoint_is_one_line_before_anything_loads(shell, capsys, store, command, resume,
                                                                        message):
    from tests.helpers import one_usage_line
    line = one_usage_line(shell, capsys, f"%rlhf {command} --resume {resume}")
    assert message in line and store.list() == []

def letter_e_reward(prompts, completions):
    return [float(c.count("e")) for c in completions]


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_online_lora_killed_mid_way_resumes_where_the_uninterrupted_run_ends(tiny_llama, tmp_path, monkeypatch, kind):
    kwargs = dict(policy=str(tiny_llama), reward="letter_e_reward", prompts=["Review: the film was", "Plot:"] * 4,
                  steps=10, batch_size=4, num_generations=2, max_new_tokens=6, method="lora", lr=1e-2,
                  dtype="float32", seed=0)
    straight = getattr(api.rlhf, kind)(**{**kwargs, "reward": letter_e_reward})
    killed_mid_way(tmp_path, kind, kwargs, block=7)   # TRL's checkpoints every step of 10: the last at 7
    resumed = getattr(api.rlhf, kind)(**{**kwargs, "reward": letter_e_reward}, resume="last")
    assert resumed.status == "ok" and resumed.metrics["steps"] == straight.metrics["steps"] == 10
    assert any("resumed from" in note for note in resumed.notes)
    for key in ("reward_first3", "reward_last3"):   # the rewards of the last steps: the resumed run's own samples
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    api.lora.unload(name=straight.adapter)
    api.lora.unload(name=resumed.adapter)


@pytest.mark.parametrize("method, lr", [("lora", 5e-3), ("full", 1e-3)])
def test_a_dpo_run_that_crashes_keeps_its_checkpoint_and_resumes(tiny_llama, separable, tmp_path, monkeypatch,
                                                                 method, lr):
    """An exception (not a kill) ends the run: the runner removes a failed run's folder, but not TRL's checkpoint;
    a damaged checkpoint is one line naming the file."""
    kwargs = dict(policy=str(tiny_llama), data=pairs_file(tmp_path, separable, 60), method=method, lr=lr,
                  steps=10, batch_size=8, dtype="float32", seed=0)
    straight = api.rlhf.dpo(**kwargs)
    from llm_magics.preference.trl_bridge import ProgressCallback
    real = ProgressCallback.on_step_end

    def power_cut_at_7(self, args, state, control, **kw):
        if state.global_step == 7:
            raise RuntimeError("power cut")
        return real(self, args, state, control, **kw)
    monkeypatch.setattr(ProgressCallback, "on_step_end", power_cut_at_7)
    with pytest.raises(RuntimeError, match="power cut"):
        api.rlhf.dpo(**kwargs)
    monkeypatch.setattr(ProgressCallback, "on_step_end", real)
    from llm_magics.settings import current
    kept = next(current().subdir("runs").glob("*/trl/checkpoint-6"))   # TRL's checkpoint every step of 10
    state = kept / "trainer_state.json"
    original = state.read_bytes()
    state.write_bytes(original.replace(b'"global_step": 6', b'"global_step": 2'))
    with pytest.raises(UsageError, match=f"damaged checkpoint {kept}.*trainer_state.json.*without --resume"):
        api.rlhf.dpo(**kwargs, resume=kept.parent.parent.name)
    state.write_bytes(original)
    resumed = api.rlhf.dpo(**kwargs, resume="last")
    assert any("at its step 6" in note for note in resumed.notes)
    assert resumed.metrics["steps"] == 10
    for key in ("test_margin", "test_chosen_shift", "test_rejected_shift", "train_loss"):
        assert resumed.metrics[key] == pytest.approx(straight.metrics[key], abs=1e-4), key
    if method == "lora":
        api.lora.unload(name=straight.adapter)
        api.lora.unload(name=resumed.adapter)


def test_a_short_run_in_one_process_writes_no_checkpoint_and_none_at_its_end(tiny_llama, separable, tmp_path,
                                                                           monkeypatch):
    """TRL's checkpoint every tenth of the run comes at most once every SAVE_GAP_S seconds in one process, and
    never at the last step of a run that ends (it would be dropped at once): a 10-step run of seconds writes none;
    without the floor it writes one every step but the last."""
    from llm_magics.preference import trl_bridge
    saves = []
    real = trl_bridge.ProgressCallback.on_save
    monkeypatch.setattr(trl_bridge.ProgressCallback, "on_save",
                        lambda self, args, state, *a, **k: (saves.append(state.global_step), real(self, args, state, *a, **k))[1])
    kwargs = dict(policy=str(tiny_llama), data=pairs_file(tmp_path, separable, 60), method="lora", lr=5e-3,
                  steps=10, batch_size=8, dtype="float32", seed=0)
    monkeypatch.setattr(trl_bridge, "SAVE_GAP_S", 3600)
    api.rlhf.dpo(**kwargs)
    assert saves == []
    monkeypatch.setattr(trl_bridge, "SAVE_GAP_S", 0)
    api.rlhf.dpo(**kwargs)
    assert saves == list(range(1, 10))
