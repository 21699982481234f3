"""`%rlhf dpo` through TRL's DPOTrainer: learns separable pairs, LoRA becomes a %lora adapter, Stop."""
import random

import numpy as np
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.errors import UsageError


def word_pairs(pos, neg, n=120, seed=0):
    rng = random.Random(seed)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(4))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg)} for _ in range(n)])


def test_dpo_with_lora_learns_and_the_adapter_joins_the_session(tiny_llama, separable, store):
    _, pos, neg = separable
    result = api.rlhf.dpo(policy=str(tiny_llama), data=word_pairs(pos, neg), method="lora", lr=5e-3, steps=20,
                          batch_size=8, name="dpo_words")
    m = result.metrics
    assert m["test_margin_before"] == 0.0 and m["test_chosen_shift_before"] == 0.0   # the policy starts as its reference
    assert m["test_accuracy_before"] == 0.5   # every margin exactly 0: a tie counts half, as the reward model's
    assert m["test_margin"] > 0 and m["test_accuracy"] >= 0.8, m
    assert m["test_chosen_shift"] > m["test_rejected_shift"]
    assert m["steps"] == 20 and result.trainable_params < result.total_params
    adapters = api.lora.adapters()
    assert "dpo_words" in adapters["name"].tolist()
    assert isinstance(api.lora.use(name="dpo_words").generate("Review:", max_new_tokens=3), str)
    assert (store.get(result.run_id)["method"], store.get(result.run_id)["command"]) == ("rlhf", "dpo")
    api.lora.unload(name="dpo_words")


def test_dpo_full_fine_tune_moves_chosen_above_rejected(tiny_llama, separable, capfd):
    _, pos, neg = separable
    result = api.rlhf.dpo(policy=str(tiny_llama), data=word_pairs(pos, neg), lr=1e-3, steps=10, batch_size=8)
    assert result.metrics["test_margin"] > 0 and result.metrics["test_accuracy"] >= 0.8
    assert result.metrics["test_margin_before"] == 0.0 and result.metrics["train_seconds"] > 0
    assert "Computing reference log probs" not in capfd.readouterr().err   # our live view is the only bar
    assert "policy" in result.artifacts and isinstance(result.generate("Review:", max_new_tokens=3), str)


def test_a_dpo_run_keeps_per_pair_implicit_rewards_that_pair_up_with_a_reward_model_on_the_same_pairs(
        tiny_llama, tiny_bert, separable, store):
    """The policy read as a reward model: one row per held-out pair, keyed as `%rlhf reward` keys it, its mean
    correctness test_accuracy; `compare --paired` pairs the DPO run with a reward model scored on the same pairs."""
    from llm_magics.runs import predictions
    _, pos, neg = separable
    pairs, held = word_pairs(pos, neg, 96), word_pairs(pos, neg, 30, seed=1)
    dpo = api.rlhf.dpo(policy=str(tiny_llama), data=pairs, test=held, method="lora", lr=5e-3, steps=12, batch_size=8)
    kept = dpo.predictions
    assert len(kept) == len(held) and set(kept["label"]) == {"chosen"}
    assert kept["correct"].mean() == pytest.approx(dpo.metrics["test_accuracy"], abs=1e-6)
    assert ((kept["score"] > 0.5) == (kept["prediction"] == "chosen")).all()
    on_disk = predictions.load(store.get(dpo.run_id)["artifacts"][predictions.FILE_KEY])
    assert on_disk["item_id"].tolist() == kept["item_id"].tolist()
    reward = api.rlhf.reward(model=str(tiny_bert), data=pairs, test=held.sample(frac=1, random_state=2),
                             batch_size=16, dtype="float32", epochs=1, lr=1e-3)
    paired = api.compare_paired(dpo, reward)
    assert paired.paired.shared == len(held) and paired.paired.difference.mean == pytest.approx(
        dpo.metrics["test_accuracy"] - reward.metrics["test_accuracy"], abs=1e-6)
    api.lora.unload(name=dpo.adapter)


def test_dpo_stops_cleanly_when_asked(tiny_llama, separable, monkeypatch):
    from llm_magics.preference import trl_bridge
    _, pos, neg = separable
    original = trl_bridge.ProgressCallback.on_step_end

    def stop_after_three(self, args, state, control, **kwargs):
        if state.global_step == 3:
            self.progress.request_stop()
        return original(self, args, state, control, **kwargs)
    monkeypatch.setattr(trl_bridge.ProgressCallback, "on_step_end", stop_after_three)
    result = api.rlhf.dpo(policy=str(tiny_llama), data=word_pairs(pos, neg), method="lora", steps=20, batch_size=8)
    assert result.status == "stopped" and result.metrics["steps"] == 3
    api.lora.unload(name=result.adapter)


def test_dpo_bad_inputs(tiny_llama, tiny_bert, store):
    same = pd.DataFrame({"prompt": ["p"] * 8, "chosen": ["a"] * 8, "rejected": ["a"] * 8})
    with pytest.raises(UsageError, match="row 0: chosen and rejected are identical"):
        api.rlhf.dpo(policy=str(tiny_llama), data=same)
    with pytest.raises(UsageError, match="--method: 'adamw' is not full or a PEFT method"):
        api.rlhf.dpo(policy=str(tiny_llama), data=same, method="adamw")
    pairs = pd.DataFrame({"prompt": ["p"] * 8, "chosen": ["a"] * 8, "rejected": ["b"] * 8})
    with pytest.raises(UsageError, match="not a causal LM"):
        api.rlhf.dpo(policy=str(tiny_bert), data=pairs)
    assert store.list() == []


@pytest.mark.parametrize("kind, lr", [("kto", 5e-3), ("orpo", 5e-3)])
def test_kto_and_orpo_through_trl_move_chosen_above_rejected(tiny_llama, separable, kind, lr):
    _, pos, neg = separable
    result = getattr(api.rlhf, kind)(policy=str(tiny_llama), data=word_pairs(pos, neg), method="lora", lr=lr,
                                     steps=20, batch_size=8)
    assert result.title == f"rlhf {kind}" and result.metrics["steps"] == 20
    assert result.metrics["test_chosen_shift"] > result.metrics["test_rejected_shift"], result.metrics
    api.lora.unload(name=result.adapter)


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_grpo_and_rloo_through_trl_with_our_reward(tiny_llama, kind):
    calls = []

    def reward(prompts, completions):
        calls.append(len(completions))
        return [float("e" in c) for c in completions]
    result = getattr(api.rlhf, kind)(policy=str(tiny_llama), reward=reward, prompts=["Review: the film was"] * 4,
                                     steps=2, batch_size=4, num_generations=2, max_new_tokens=8, method="lora")
    assert result.metrics["steps"] == 2 and "reward_first3" in result.metrics
    assert calls and all(n % 2 == 0 for n in calls)
    api.lora.unload(name=result.adapter)


def test_online_methods_check_their_group_size(tiny_llama):
    with pytest.raises(UsageError, match="multiple of --num-generations"):
        api.rlhf.grpo(policy=str(tiny_llama), reward=lambda p, c: [0.0] * len(c), prompts=["a"], batch_size=6,
                      num_generations=4)


def test_a_dpo_lora_policy_is_a_normal_lora_adapter_afterwards(tiny_llama, separable, tmp_path):
    """`%lora adapters` lists the DPO-trained adapter; use, save, load and merge give the
    same policy (its log-probs of a preferred answer, which training moved away from the base's)."""
    from llm_magics.adapters import hub
    from llm_magics.preference.trl_bridge import pair_logprobs
    _, pos, neg = separable
    result = api.rlhf.dpo(policy=str(tiny_llama), data=word_pairs(pos, neg, n=40), method="lora", lr=5e-3, steps=6,
                          batch_size=8, name="dpo_ad")
    assert result.adapter == "dpo_ad" and "dpo_ad" in api.lora.adapters()["name"].tolist()
    pair = pd.DataFrame({"prompt": ["Review:"], "chosen": [" " + " ".join(pos[:4])],
                         "rejected": [" " + " ".join(neg[:4])]})

    def scores(model, tokenizer):   # log p of the preferred answer and of the other
        return np.concatenate(pair_logprobs(model, tokenizer, pair, 64))

    def logprobs(name):
        adapter_set = hub().find(name)[0]
        with adapter_set.lock:
            model = adapter_set.activate(name)
            return scores(model, adapter_set.tokenizer), model
    tuned, model = logprobs("dpo_ad")
    with model.disable_adapter():
        base = scores(model, hub().find("dpo_ad")[0].tokenizer)
    assert abs(tuned - base).max() > 1e-3                         # the adapter holds what DPO learned
    assert isinstance(api.lora.use(name="dpo_ad").generate("Review:", max_new_tokens=3), str)
    folder = api.lora.save(name="dpo_ad", path=str(tmp_path / "dpo_ad"))
    assert (folder / "adapter_model.safetensors").exists()
    merged = api.lora.merge(name="dpo_ad")
    merged_model = merged._need_model()
    assert not hasattr(merged_model, "peft_config")
    # The base is bf16 here (a CPU with native bf16): merging rounds the sum to bf16 once (measured 0.0016 of 107).
    np.testing.assert_allclose(scores(merged_model, merged._tokenizer), tuned, atol=1e-2)
    api.lora.unload(name="dpo_ad")
    assert "dpo_ad" not in api.lora.adapters()["name"].tolist()
    api.lora.load(path=str(folder), name="dpo_again")
    np.testing.assert_allclose(logprobs("dpo_again")[0], tuned, atol=1e-4)
    api.lora.unload(name="dpo_again")


def test_dpo_sft_weight_adds_the_chosen_answers_likelihood(tiny_llama, separable, store):
    """--sft-weight (RPO): DPO's loss plus the chosen answers' NLL; the chosen answers gain probability where
    plain DPO, same pairs and seed, lets them drift. KTO/ORPO refuse it in one line, before anything runs."""
    _, pos, neg = separable
    pairs = word_pairs(pos, neg, n=48)
    shift = {}
    for weight in (0.0, 1.0):
        result = api.rlhf.dpo(policy=str(tiny_llama), data=pairs, test=pairs.iloc[:16], method="lora", lr=5e-3,
                              steps=6, batch_size=8, sft_weight=weight)
        shift[weight] = result.metrics["test_chosen_shift"]
        api.lora.unload(name=result.adapter)
    assert shift[1.0] > shift[0.0] + 0.1, shift
    runs = len(store.list())
    for kind in ("kto", "orpo"):
        with pytest.raises(UsageError, match=f"--sft-weight is a DPO option .RPO.; %rlhf {kind} has no such term"):
            getattr(api.rlhf, kind)(policy=str(tiny_llama), data=pairs, sft_weight=1.0)
    assert len(store.list()) == runs
