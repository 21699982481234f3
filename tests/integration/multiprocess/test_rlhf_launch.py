"""`%rlhf reward|dpo|kto|orpo --devices 2`: real torchrun workers on the CPU (gloo), tiny models.

Tolerances (a 2-process run against a 1-process run with the same global batch and seed; what differs is
float summation order, and dropout masks drawn per rank, so the tiny models here have dropout off):
- DPO with LoRA: TRL's logged training loss within 1e-4 at every step, the held-out implicit margin and the
  chosen/rejected shifts within 1e-4 (measured: 1e-6 apart at most).
- KTO (LoRA) and ORPO (full): the held-out shifts within 0.01 (measured: KTO 1e-6; ORPO 2e-3, whose NLL term
  is a token mean per worker: two workers' means of their own tokens are not the mean over the whole batch).
- Reward model (DDP, full; FSDP, LoRA without dropout): the held-out pair accuracy within 0.02, the margin and
  validation loss within 1e-3 (measured: 2e-5 apart at most).
"""
import json
import os
import random
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.adapters import hub
from llm_magics.errors import UsageError

from tests.integration.multiprocess.test_launch_multiprocess import (  # noqa: F401  (the autouse fixture, its check)
    no_leftovers, run_processes)

pytestmark = pytest.mark.multiprocess


def without_dropout(folder, tmp_path_factory, name):
    target = tmp_path_factory.mktemp(name) / "model"
    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout"):
        if key in config:
            config[key] = 0.0
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def llama(tiny_llama, tmp_path_factory):
    return without_dropout(tiny_llama, tmp_path_factory, "tiny-llama-no-dropout")


@pytest.fixture(scope="module")
def bert(tiny_bert, tmp_path_factory):
    return without_dropout(tiny_bert, tmp_path_factory, "tiny-bert-no-dropout")


def word_pairs(pos, neg, n, seed=0, lengths=(4, 4)):
    rng = random.Random(seed)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(rng.randint(*lengths)))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg)} for _ in range(n)])


def losses(result):
    history = result.tables["history"]
    return history["loss"].dropna().to_numpy()


def test_dpo_lora_on_two_processes_follows_one_and_the_adapter_joins_the_kernel(shell, llama, separable, store):
    _, pos, neg = separable
    pairs = word_pairs(pos, neg, 80)
    # fp32: one process and two are compared to 1e-4; a bf16 base rounds differently for each batch shape.
    args = dict(policy=str(llama), method="lora", lr=5e-3, steps=6, batch_size=8, seed=0, dtype="float32")
    one = api.rlhf.dpo(data=pairs, name="dpo_one", **args)
    shell.user_ns["pairs"] = pairs
    shell.run_line_magic("rlhf", f"dpo --policy {llama} --data pairs --method lora --lr 5e-3 --steps 6 "
                                 "--batch-size 8 --dtype float32 --name dpo_two --devices 2 --out two")
    two = shell.user_ns["two"]
    assert two.status == "ok" and two.metrics["steps"] == one.metrics["steps"] == 6
    assert two.device == "cpu ×2 (ddp)" and two.title == "rlhf dpo"
    # accelerate took the worker's gloo group as it is: TRL's trainer ran data-parallel, 4 of 8 pairs each
    assert "trained on 2 processes: TRL's trainer as MULTI_CPU (gloo), each taking 4 of every 8 pairs" in two.notes
    assert len(losses(two)) == len(losses(one)) == 6   # measured: 1e-7 apart at most
    assert np.abs(losses(one) - losses(two)).max() < 1e-4, (losses(one), losses(two))
    for key in ("test_margin", "test_chosen_shift", "test_rejected_shift"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], abs=1e-4), key
    assert two.metrics["test_margin"] > 0 and two.metrics["test_margin_before"] == 0.0
    # The adapter is a normal %lora adapter in the kernel, holding what the workers trained.
    assert "dpo_two" in api.lora.adapters()["name"].tolist() and two.adapter == "dpo_two"
    assert isinstance(two.generate("Review:", max_new_tokens=3), str)
    from llm_magics.preference.trl_bridge import pair_logprobs, implicit_rewards
    adapter_set = hub().find("dpo_two")[0]
    with adapter_set.lock:
        model = adapter_set.activate("dpo_two")
        test = pairs.head(8)
        tuned = pair_logprobs(model, adapter_set.tokenizer, test, 128)
        with model.disable_adapter():
            base = pair_logprobs(model, adapter_set.tokenizer, test, 128)
    assert implicit_rewards(tuned, base, 0.1, "t")["t_margin"] > 0
    row = store.get(two.run_id)
    assert (row["method"], row["command"]) == ("rlhf", "dpo") and row["options"]["devices"] == 2
    assert row["metrics"]["test_margin"] == pytest.approx(two.metrics["test_margin"])
    assert "launch" in two.artifacts and "adapter" in two.artifacts
    # Rank 0 alone streamed the live view: one advance per step, TRL's logged metrics with them.
    events = [json.loads(line) for line in open(os.path.join(two.artifacts["launch"], "events.jsonl"))]
    assert sum(e["call"] == "advance" for e in events) == 6
    assert any(e["call"] == "set" and "margin" in e["kwargs"] for e in events)


@pytest.mark.parametrize("train, strategy", [("full", "ddp"), ("lora", "fsdp")])
def test_reward_on_two_processes_follows_one_and_scores_in_the_kernel(bert, separable, store, train, strategy):
    _, pos, neg = separable
    pairs = word_pairs(pos, neg, 160, lengths=(3, 7))
    args = dict(model=str(bert), data=pairs, train=train, lr=1e-3 if train == "full" else 1e-2, epochs=2,
                batch_size=16, dtype="float32", dropout=0.0, seed=0)
    one = api.rlhf.reward(**args)
    two = api.rlhf.reward(devices=2, strategy=strategy, **args)
    assert two.status == "ok" and two.metrics["steps"] == one.metrics["steps"]
    assert two.device == f"cpu ×2 ({strategy})"
    assert f"trained on 2 processes ({strategy})" in " ".join(two.notes)
    assert two.metrics["test_accuracy"] == pytest.approx(one.metrics["test_accuracy"], abs=0.02)
    assert two.metrics["test_margin"] == pytest.approx(one.metrics["test_margin"], abs=1e-3)
    assert two.metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], abs=1e-3)
    assert two.metrics["test_accuracy"] >= 0.9, two.metrics
    # .score() in the kernel loads the model the workers saved. Compared as a difference of two scores, as a
    # reward is read: Bradley–Terry does not see a constant offset (the score head's bias is held at zero).
    texts = ["Review: " + " ".join(pos[:4]), "Review: " + " ".join(neg[:4])]
    good, bad = two.score(texts)
    assert good > bad
    one_good, one_bad = one.score(texts)
    assert good - bad == pytest.approx(one_good - one_bad, abs=2e-3)
    row = store.get(two.run_id)
    assert (row["method"], row["command"]) == ("rlhf", "reward") and row["options"]["devices"] == 2
    assert row["metrics"]["test_accuracy"] == two.metrics["test_accuracy"]


@pytest.mark.parametrize("kind, method", [("kto", "lora"), ("orpo", "full")])
def test_kto_and_orpo_on_two_processes_follow_one(llama, separable, kind, method):
    _, pos, neg = separable
    args = dict(policy=str(llama), data=word_pairs(pos, neg, 48), method=method, lr=5e-3, steps=3, batch_size=8)
    one = getattr(api.rlhf, kind)(**args)
    two = getattr(api.rlhf, kind)(devices=2, **args)
    assert two.title == f"rlhf {kind}" and two.status == "ok" and two.metrics["steps"] == 3
    for key in ("test_chosen_shift", "test_rejected_shift"):
        assert two.metrics[key] == pytest.approx(one.metrics[key], abs=0.01), key
    assert two.metrics["test_chosen_shift"] != 0.0   # it trained
    # In the kernel: a LoRA policy is a %lora adapter, a fully tuned one is loaded from its folder.
    assert isinstance(two.generate("Review:", max_new_tokens=2), str)
    if method == "lora":
        assert two.adapter in api.lora.adapters()["name"].tolist()
    else:
        assert not two.adapter and "policy" in two.artifacts


def test_stop_ends_both_dpo_workers_with_a_usable_result(llama, separable, store):
    _, pos, neg = separable
    handle = api.rlhf.dpo(policy=str(llama), data=word_pairs(pos, neg, 80), method="lora", steps=400, batch_size=4,
                          name="dpo_stop", devices=2, bg=True)
    start = time.monotonic()
    while handle.progress.state.done < 3:
        assert not handle.done, handle._error
        assert time.monotonic() - start < 120, "the workers never got going"
        time.sleep(0.1)
    asked = time.monotonic()
    handle.stop()
    result = handle.result(timeout=60)
    assert time.monotonic() - asked < 20
    assert result.status == "stopped" and 3 <= result.metrics["steps"] < 400, result.metrics
    assert store.get(result.run_id)["status"] == "stopped"
    assert run_processes() == []
    assert "dpo_stop" in api.lora.adapters()["name"].tolist() and isinstance(result.generate("Review:", 2), str)


@pytest.mark.parametrize("line", [
    "ppo --policy p --reward r --prompts x --devices 2",
    "grpo --policy p --reward r --prompts x --devices 2",
    "rloo --policy p --reward r --prompts x --devices 3",
    "eval run1 --reward r --prompts x --devices 2",
    "collect prefs.jsonl --model m --prompts x --devices 2",
])
def test_commands_that_run_in_one_process_refuse_devices_in_one_line(shell, store, line):
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("rlhf", line)
    message = str(caught.value)
    word = line.split()[0]
    assert message == (f"%rlhf {word} runs in one process: drop --devices/--nodes (they take %rlhf reward, "
                       "%rlhf dpo, %rlhf kto, %rlhf orpo, %finetune and %lora)")
    assert store.list() == []


def test_mistakes_are_one_line_before_any_worker_starts(llama, separable, store, home):
    _, pos, neg = separable
    pairs = word_pairs(pos, neg, 40)
    same = pd.DataFrame({"prompt": ["p"] * 8, "chosen": ["a"] * 8, "rejected": ["a"] * 8})
    started = time.monotonic()
    with pytest.raises(UsageError, match="row 0: chosen and rejected are identical"):
        api.rlhf.dpo(policy=str(llama), data=same, devices=2)
    with pytest.raises(UsageError, match="--batch-size 5 does not split over 2 workers"):
        api.rlhf.dpo(policy=str(llama), data=pairs, batch_size=5, devices=2)
    with pytest.raises(UsageError, match="--strategy fsdp: %rlhf orpo runs TRL's trainer data-parallel"):
        api.rlhf.orpo(policy=str(llama), data=pairs, strategy="fsdp", devices=2)
    with pytest.raises(UsageError, match="row 0: chosen and rejected are identical"):
        api.rlhf.reward(model=str(llama), data=same, devices=2)
    assert time.monotonic() - started < 30
    assert store.list() == [] and not list((home.cache_dir / "runs").glob("*/launch"))
