"""`%rlhf ppo|grpo|rloo` say when the reward gives no signal, look at it before training, and
`--probe-reward` only looks."""
import pytest

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.preference.signal import NO_SIGNAL_STEPS, RewardSignal, Spread

PROMPTS = ["Review: the film was", "Review: this movie is", "Review: the acting felt", "Review: overall it was"]
NOTHING = "there is nothing to learn from"


def zero(prompts, completions):
    return [0.0] * len(completions)


def length(prompts, completions):
    return [len(c) / 40 for c in completions]


def has_e(prompts, completions):
    return [float("e" in c) for c in completions]


def run(kind, tiny_llama, reward, **kwargs):
    if kind == "ppo":
        args = dict(steps=6, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=8, lr=1e-3)
    else:
        args = dict(steps=6, batch_size=4, num_generations=2, max_new_tokens=8)
    return getattr(api.rlhf, kind)(policy=str(tiny_llama), reward=reward, prompts=PROMPTS, **{**args, **kwargs})


def per_step(result):
    """The history's step rows (TRL's history ends with its run summary)."""
    history = result.tables["history"]
    return history[history["reward_std"].notna()]


@pytest.fixture
def said(monkeypatch):
    """Every line the live views log, with the step the view was at."""
    from llm_magics.progress.events import Progress
    lines = []
    log = Progress.log

    def record(self, message):
        lines.append((self.state.done, message))
        log(self, message)
    monkeypatch.setattr(Progress, "log", record)
    return lines


# -- the tracker alone ---------------------------------------------------------------------------------------
def test_a_flat_reward_is_reported_once_after_the_threshold_and_a_varying_one_never(said):
    from llm_magics.progress import make_progress
    progress = make_progress("signal-test", "ppo", "none")
    signal = RewardSignal("ppo", progress)
    for step in range(1, NO_SIGNAL_STEPS + 3):
        signal.observe([0.0] * 32)
        assert bool(said) == (step >= NO_SIGNAL_STEPS)
    assert [m for _, m in said] == [f"the reward was 0.0 for all 128 rollouts of the last {NO_SIGNAL_STEPS} steps: "
                                    "there is nothing to learn from; make the reward denser, sample more "
                                    "(`--batch-size`, `--temperature`, `--max-new-tokens`), or start from "
                                    "demonstrations"]
    # The Result's note is the same line, counting the whole streak.
    assert signal.notes == [said[0][1].replace(f"128 rollouts of the last {NO_SIGNAL_STEPS} steps",
                                               f"{32 * (NO_SIGNAL_STEPS + 2)} rollouts of the last "
                                               f"{NO_SIGNAL_STEPS + 2} steps")]
    signal.observe([0.0, 1.0] * 16)          # the streak ends: the note names its steps
    assert signal.notes[0].startswith(f"the reward was 0.0 for all {32 * (NO_SIGNAL_STEPS + 2)} rollouts of steps "
                                      f"1-{NO_SIGNAL_STEPS + 2}:")
    varying = RewardSignal("ppo")
    for step in range(20):
        varying.observe([step % 3, 0.5, 0.25, 0.0])
    assert varying.notes == [] and not varying.should_stop


def test_grpo_groups_count_when_every_prompt_group_is_flat():
    spread = Spread.of([1.0, 1.0, 0.0, 1.0, 0.5, 0.5], groups=[0, 0, 1, 1, 2, 2])
    assert spread.zero_std_groups == pytest.approx(2 / 3) and not spread.flat and spread.std > 0
    signal = RewardSignal("grpo", group=2, stop_after=3, total=10)
    scored = signal.recording(lambda prompts, completions: [1.0, 1.0, 0.0, 0.0])
    assert scored.__name__ == "<lambda>"
    stops = []
    for _ in range(3):   # groups differ from each other, but each is flat: GRPO's advantages are all zero
        scored(["a"] * 4, ["x"] * 4)
        stops.append(signal.end_step())
    assert stops == [False, False, True]
    assert signal.notes[-1].startswith("stopped at step 3 (--stop-no-signal 3): each prompt's 2 completions all got "
                                       "the same reward in each of the last 3 steps (12 rollouts")
    assert "`--num-generations`" in signal.notes[-1]


# -- the commands ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_an_always_zero_reward_is_said_in_the_view_and_the_result(tiny_llama, said, kind):
    result = run(kind, tiny_llama, zero)
    assert result.status == "ok" and result.metrics["steps"] == 6
    flat = [(done, m) for done, m in said if m.startswith("the reward was 0.0 for all")]
    assert len(flat) == 1 and f"of the last {NO_SIGNAL_STEPS} steps: {NOTHING}" in flat[0][1], said
    assert flat[0][0] in (NO_SIGNAL_STEPS - 1, NO_SIGNAL_STEPS)   # said during step 4, while the run went on
    assert any(n.startswith("the reward was 0.0 for all") and "of the last 6 steps" in n and NOTHING in n
               for n in result.notes), result.notes
    history = per_step(result)
    assert len(history) == 6 and (history["reward_std"] == 0).all()
    if kind == "grpo":
        assert (history["frac_reward_zero_std"] == 1).all()


@pytest.mark.parametrize("kind", ["ppo", "grpo", "rloo"])
def test_stop_no_signal_ends_the_run_at_that_step_with_the_reason(tiny_llama, store, kind):
    result = run(kind, tiny_llama, zero, steps=10, stop_no_signal=3)
    assert result.status == "stopped" and result.metrics["steps"] == 3
    assert len(per_step(result)) == 3
    reason = [n for n in result.notes if n.startswith("stopped at step 3 (--stop-no-signal 3): the reward was 0.0")]
    assert len(reason) == 1 and NOTHING in reason[0], result.notes
    assert store.get(result.run_id)["status"] == "stopped"


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_a_varying_reward_never_triggers_the_note(tiny_llama, said, kind):
    result = run(kind, tiny_llama, length, stop_no_signal=1)
    assert result.status == "ok" and result.metrics["steps"] == 6
    assert not any(NOTHING in m for _, m in said) and not any(NOTHING in n for n in result.notes)
    assert len(per_step(result)) == 6 and (per_step(result)["reward_std"] > 0).all()


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_the_look_before_training_prints_the_rewards_mean_and_spread(tiny_llama, said, kind):
    result = run(kind, tiny_llama, has_e, steps=1)
    looks = [(done, m) for done, m in said if m.startswith("before training, the reward of the policy as loaded")]
    assert len(looks) == 1 and looks[0][0] == 0, said
    assert " mean " in looks[0][1] and " std " in looks[0][1]
    assert ("of the prompt groups all equal" in looks[0][1]) == (kind == "grpo")
    assert looks[0][1] in result.notes


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_probe_reward_only_looks(tiny_llama, store, monkeypatch, kind):
    import transformers

    from llm_magics.preference.ppo import PpoTrainer

    def no_training(*args, **kwargs):
        raise AssertionError("--probe-reward trained")
    monkeypatch.setattr(PpoTrainer, "__init__", no_training)
    monkeypatch.setattr(transformers.Trainer, "__init__", no_training)
    result = run(kind, tiny_llama, has_e, probe_reward=True)
    samples = result.tables["samples"]
    assert list(samples.columns) == ["prompt", "completion", "reward"] and len(samples) == (8 if kind == "ppo" else 4)
    assert set(samples["prompt"]) <= set(PROMPTS)
    assert samples["reward"].tolist() == has_e(None, samples["completion"].tolist())
    assert result.status == "ok" and result.metrics["reward_mean"] == pytest.approx(samples["reward"].mean())
    assert result.metrics["reward_std"] == pytest.approx(samples["reward"].std())
    assert "policy" not in result.artifacts and store.get(result.run_id)["status"] == "ok"


def test_the_look_is_seeded_and_leaves_the_global_generator_alone(tiny_llama):
    import torch
    torch.manual_seed(7)
    before = torch.get_rng_state()
    first = run("ppo", tiny_llama, has_e, probe_reward=True)
    assert torch.equal(torch.get_rng_state(), before)
    again, other = (run("ppo", tiny_llama, has_e, probe_reward=True, seed=seed) for seed in (0, 1))
    assert first.tables["samples"].equals(again.tables["samples"])
    assert not first.tables["samples"].equals(other.tables["samples"])


@pytest.mark.parametrize("kind", ["ppo", "grpo"])
def test_a_bad_stop_no_signal_is_one_line(tiny_llama, store, kind):
    with pytest.raises(UsageError) as error:
        run(kind, tiny_llama, zero, stop_no_signal=0)
    assert "--stop-no-signal" in str(error.value) and "must be > 0" in str(error.value)
    assert "\n" not in str(error.value) and store.list() == []
