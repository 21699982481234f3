"""`%rlhf ppo`: rollouts, exact first-minibatch ratio, learning on a tiny causal LM, bad inputs."""
import math

import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.preference.ppo import response_mask

PROMPTS = ["Review: the film was", "Review: this movie is", "Review: the acting felt", "Review: overall it was"]


def rule(word, sign=1.0):
    def reward(prompts, completions):
        return [sign * float(word in c) for c in completions]
    return reward


def ppo(tiny_llama, reward=None, **kwargs):
    # --stop-kl 0.03: without it the 4 update epochs over 8 rollouts at lr 1e-2 move the policy ~0.1 nats per
    # token per minibatch (half the tokens clipped), mostly through the tied embedding rows of every sampled
    # token, and the KL to the reference reached 6.7-17 nats (mean over 15 steps, seeds 0-11) with no reward
    # behind it; with it 2.0-5.5 (seed 0: 4.1) for a reward gain of 0.29-0.67 (seed 11: none).
    args = dict(policy=str(tiny_llama), reward=reward, prompts=PROMPTS, steps=15, batch_size=8, minibatch_size=4,
                max_new_tokens=24, lr=1e-2, kl=0.05, stop_kl=0.03, seed=0)
    return api.rlhf.ppo(**{**args, **kwargs})


def test_response_mask_runs_to_the_first_eos_even_when_pad_is_eos():
    eos = 2
    response = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    mask, ended = response_mask(response, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_ppo_learns_a_rule_reward_and_the_flipped_reward_unlearns_it(tiny_llama, store):
    up = ppo(tiny_llama, rule("ed"))
    assert up.metrics["reward_last3"] >= up.metrics["reward_first3"] + 0.3, up.tables["history"]["reward"].tolist()
    assert "nan_seen" not in up.metrics
    # Every step's first minibatch replays the rollout exactly: ratio 1, KL to the rollout policy 0.
    assert up.metrics["first_ratio_max_dev"] == 0.0 and up.metrics["first_kl_to_rollout"] == 0.0
    assert len(up.tables["history"]) == 15 and up.rows_per_s > 0
    assert up.metrics["kl_mean"] < 5, up.tables["history"]["kl"].tolist()   # nats per completion (k1)
    # The early stop acted: some steps made fewer than 4 epochs × 2 minibatches of updates.
    assert up.tables["history"]["updates"].min() < 8
    assert (store.get(up.run_id)["method"], store.get(up.run_id)["command"]) == ("rlhf", "ppo")
    down = ppo(tiny_llama, rule("ed", -1.0))
    presence_first, presence_last = -down.metrics["reward_first3"], -down.metrics["reward_last3"]
    assert presence_last < presence_first, down.tables["history"]["reward"].tolist()
    # 8 rollouts a step are a noisy count of a word the base model writes 17 % of the time: 64 fresh samples
    # from the flipped run's policy and from the reference say the same (measured 0.06 against 0.17).
    check = api.rlhf.eval(run=down, reward=rule("ed"), prompts=PROMPTS * 16, max_new_tokens=24).metrics
    assert check["policy_reward"] <= 0.5 * check["reference_reward"], check
    assert math.isfinite(down.metrics["kl_mean"])
    # The tuned policy generates.
    assert isinstance(up.generate("Review: the film was", max_new_tokens=5), str)


def test_ppo_with_lora_keeps_one_model_and_its_reference_is_the_adapter_disabled(tiny_llama):
    result = ppo(tiny_llama, rule("o"), steps=2, method="lora", lr=1e-2)
    assert result.trainable_params < result.total_params
    assert result.metrics["first_ratio_max_dev"] == 0.0
    assert result.metrics["kl_mean"] == pytest.approx(result.metrics["kl_mean"])  # finite
    assert (result.metrics["kl_k3_mean"]) >= 0
    assert result.run_id in api.lora.adapters()["name"].tolist()   # a %lora adapter like any other
    api.lora.unload(name=result.run_id)


def test_a_reward_model_result_is_a_reward(tiny_llama, tiny_bert):
    pairs = pd.DataFrame({"prompt": ["Review:"] * 30, "chosen": [" great fun"] * 30, "rejected": [" dull mess"] * 30})
    rm = api.rlhf.reward(model=str(tiny_bert), data=pairs, epochs=1)
    result = ppo(tiny_llama, rm, steps=1)
    assert result.metrics["steps"] == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(kl=-0.1), "--kl: is a KL coefficient"),
    (dict(kl=float("nan")), "--kl: must be a finite number"),
    (dict(steps=0), "--steps: must be > 0"),
    (dict(method="prefix"), "--method: prefix learns virtual tokens"),
    (dict(method="sgd"), "--method: 'sgd' is not full or a PEFT method"),
    (dict(reward="no_such_reward"), "--reward 'no_such_reward': no such variable"),
    (dict(reward=lambda p, c: [1.0]), "returned 1 values for 8 completions"),
    (dict(reward=lambda p, c: [float("nan")] * len(c)), "returned nan (not a finite number) for completion 0"),
    (dict(prompts=[]), "--prompts is empty"),
])
def test_ppo_bad_inputs_are_one_line_and_record_nothing(tiny_llama, store, kwargs, message):
    with pytest.raises(UsageError) as error:
        ppo(tiny_llama, **{"reward": rule("o"), "steps": 2, **kwargs})
    assert message in str(error.value) and "\n" not in str(error.value)
    assert store.list() == []


def test_eval_measures_win_rate_and_kl_against_the_reference(tiny_llama, store):
    tuned = ppo(tiny_llama, rule("ed"))
    report = api.rlhf.eval(run=tuned, reward=rule("ed"), prompts=PROMPTS * 8, max_new_tokens=24)
    m = report.metrics
    assert m["prompts"] == 32 and m["policy_reward"] > m["reference_reward"] and m["win_rate"] > 0.5, m
    assert m["kl_mean"] > 0 and m["kl_k3_mean"] >= 0
    assert list(report.tables["sample pairs"].columns)[:3] == ["prompt", "policy", "reference"]
    # After a restart only the run id is left.
    again = api.rlhf.eval(run=tuned.run_id, reward=rule("ed"), prompts=PROMPTS * 8, max_new_tokens=24)
    assert again.metrics["policy_reward"] > again.metrics["reference_reward"]
    with pytest.raises(UsageError, match="not a variable holding a tuned policy nor the run id"):
        api.rlhf.eval(run="rlhf-nope", reward=rule("ed"), prompts=PROMPTS)


def test_a_stop_request_ends_ppo_after_the_current_step(tiny_llama):
    import copy

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_magics.progress import make_progress
    from llm_magics.preference.ppo import PolicyWithValue, PpoConfig, PpoTrainer
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    reference = copy.deepcopy(model).eval()
    policy = PolicyWithValue(model, AutoTokenizer.from_pretrained(tiny_llama), reference)
    progress = make_progress("ppo-test", "ppo", "none")
    progress.start(total=10, unit="steps")
    trainer = PpoTrainer(policy, rule("o"), "rule", PROMPTS, PpoConfig(steps=10, max_new_tokens=6), progress,
                         on_step=lambda stats: stats.step == 2 and progress.request_stop())
    assert trainer.train() == "stopped" and len(trainer.history) == 2
    assert trainer.history[-1].first_ratio_max_dev == 0.0


def test_the_early_stop_bounds_each_steps_move_from_the_rollout_policy(tiny_llama):
    free = ppo(tiny_llama, rule("ed"), steps=4, stop_kl=None)
    held = ppo(tiny_llama, rule("ed"), steps=4, stop_kl=0.005)
    assert held.tables["history"]["updates"].tolist() != free.tables["history"]["updates"].tolist()
    assert set(free.tables["history"]["updates"]) == {8}      # 4 epochs × 2 minibatches when nothing stops
    assert held.tables["history"]["updates"].min() >= 1       # the first minibatch always updates


def length_reward(prompts, completions):
    return [len(c) / 40 for c in completions]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_ppo_run_draws_from_its_own_generator(tiny_llama, method):
    """The global generator is the user's: a run neither reads nor moves it, and its seed alone decides the
    rollouts (the value head's and the adapter's initialisation, and every sample)."""
    def run(seed):
        return ppo(tiny_llama, length_reward, steps=2, max_new_tokens=8, method=method, seed=seed)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = run(0)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(99)          # another global state: the same run all the same
    again, other = run(0), run(1)
    columns = ["reward", "kl", "policy_loss", "value_loss"]
    assert first.tables["history"][columns].equals(again.tables["history"][columns])
    assert first.tables["samples"]["completion"].tolist() == again.tables["samples"]["completion"].tolist()
    assert first.tables["samples"]["completion"].tolist() != other.tables["samples"]["completion"].tolist()
    assert first.tables["history"]["kl"].iloc[-1] != 0      # the policy did move: the comparison means something
    torch.manual_seed(1234)
    report = api.rlhf.eval(run=first, reward=length_reward, prompts=PROMPTS, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), before)
    repeat = api.rlhf.eval(run=first, reward=length_reward, prompts=PROMPTS, max_new_tokens=8)
    assert report.tables["sample pairs"].equals(repeat.tables["sample pairs"])
    if method == "lora":
        for result in (first, again, other):
            api.lora.unload(name=result.run_id)


@pytest.mark.parametrize("how", ["stop", "interrupt"])
def test_stop_or_interrupt_ends_a_ppo_run_with_a_usable_result(tiny_llama, store, monkeypatch, how):
    """The live view's Stop (the progress' stop flag) or a kernel interrupt, after step 2 of 10: the run ends
    after that step, is recorded as stopped, and its Result holds the policy as it was then."""
    import os
    import signal
    import time

    from llm_magics.progress.events import Progress
    advance = Progress.advance

    def advance_then_stop(self, n=1, **metrics):
        advance(self, n, **metrics)
        if self.state.done == 2 and not self.should_stop:
            if how == "interrupt":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            else:
                self.request_stop()
    monkeypatch.setattr(Progress, "advance", advance_then_stop)
    result = ppo(tiny_llama, rule("o"), steps=10, max_new_tokens=8)
    assert result.status == "stopped" and result.metrics["steps"] == 2
    assert len(result.tables["history"]) == 2 and any("stopped after 2 of 10 steps" in n for n in result.notes)
    assert isinstance(result.generate("Review: the film was", max_new_tokens=4), str)
    assert store.get(result.run_id)["status"] == "stopped"
    from pathlib import Path
    assert (Path(result.artifacts["policy"]) / "value_head.safetensors").exists()


def test_seeds_repeat_a_ppo_run_and_give_its_reward_gain_with_an_interval(tiny_llama, store):
    result = ppo(tiny_llama, rule("good"), steps=2, max_new_tokens=4, seeds=2, seed=3)
    children = [r for r in store.list() if r["parent_id"] == result.run_id]
    assert sorted(r["options"]["seed"] for r in children) == [3, 4]
    assert {"reward_gain_t_low", "reward_gain_t_high"} <= set(result.metrics) and "sampling" in result.seeded
