"""`%rlhf reward`: Bradley–Terry on pairs, on our engine; scores after a restart; bad inputs."""
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.methods.rlhf.results import load_reward
from llm_magics.preference.reward import bradley_terry, encode, pair_metrics
from transformers import AutoTokenizer


def word_pairs(pos, neg, n=240, seed=0):
    """Prompt + two answers: the one made of 'positive' words is preferred."""
    rng = random.Random(seed)
    make = lambda words: " " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))  # noqa: E731
    return pd.DataFrame([{"prompt": "Review:", "chosen": make(pos), "rejected": make(neg)} for _ in range(n)])


def test_bradley_terry_and_pair_metrics_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])
    # −log σ(2), −log σ(−1), −log σ(0)
    expected = (0.126928 + 1.313262 + 0.693147) / 3
    assert float(bradley_terry(chosen, rejected)) == pytest.approx(expected, abs=1e-5)
    metrics = pair_metrics(chosen, rejected, "val")
    assert metrics["val_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)   # a tie counts half
    assert metrics["val_margin"] == pytest.approx(1 / 3)


def test_left_truncation_keeps_the_end(tiny_bert):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = encode(tokenizer, ["alpha beta gamma delta omega great"], max_length=4)[0]
    assert len(ids) == 4 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    body = tokenizer("alpha beta gamma delta omega great", add_special_tokens=False)["input_ids"]
    assert len(body) > 2 and ids[1:-1] == body[-2:]


@pytest.mark.parametrize("train, lr", [("full", 1e-3), ("lora", 1e-2)])
def test_reward_model_learns_separable_pairs_and_scores_after_a_restart(tiny_bert, separable, store, train, lr):
    _, pos, neg = separable
    result = api.rlhf.reward(model=str(tiny_bert), data=word_pairs(pos, neg), train=train, lr=lr, epochs=3,
                             batch_size=16, dtype="float32")
    # chance is 0.5; over seeds 0-7 LoRA's held-out accuracy was 0.92-1.0 (one pair of 48 moves it 0.02,
    # and which one depends on the dropout draws), so 0.9, not a bar one draw of masks decides
    assert result.metrics["test_accuracy"] >= 0.9, result.metrics
    assert result.metrics["test_margin"] > result.metrics.get("val_margin_before", 0)
    good, bad = result.score(["Review:", "Review:"], [" " + " ".join(pos[:4]), " " + " ".join(neg[:4])])
    assert good > bad
    row = store.get(result.run_id)
    assert (row["method"], row["command"]) == ("rlhf", "reward")
    assert row["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    if train == "lora":
        assert result.trainable_params < result.total_params
    # A new session: only the run id (or the folder) is left.
    api.free()
    again = load_reward(result.run_id)
    assert again.score(["Review: " + " ".join(pos[:4])]) == pytest.approx(result.score(["Review: " + " ".join(pos[:4])]),
                                                                        abs=1e-5)
    assert again.metrics["test_accuracy"] == result.metrics["test_accuracy"]


def test_head_only_trains_the_scoring_layer_only(tiny_bert, separable):
    _, pos, neg = separable
    result = api.rlhf.reward(model=str(tiny_bert), data=word_pairs(pos, neg, 80), train="head", epochs=1)
    assert result.trainable_params == 32   # the weights; the bias is held at zero (fix_score_bias)


def test_reward_bad_inputs_are_one_line_and_record_nothing(tiny_bert, store, tmp_path):
    same = pd.DataFrame({"prompt": ["p"] * 10, "chosen": ["a"] * 10, "rejected": ["a"] * 10})
    with pytest.raises(UsageError, match="row 0: chosen and rejected are identical"):
        api.rlhf.reward(model=str(tiny_bert), data=same)
    with pytest.raises(UsageError, match="columns found: text, label"):
        api.rlhf.reward(model=str(tiny_bert), data=pd.DataFrame({"text": ["a", "b"], "label": [0, 1]}))
    with pytest.raises(UsageError, match="--train.*prompt.*virtual tokens"):
        api.rlhf.reward(model=str(tiny_bert), data=same, train="prompt")
    with pytest.raises(UsageError, match="not full, head or a PEFT method"):
        api.rlhf.reward(model=str(tiny_bert), data=same, train="qlora")
    with pytest.raises(UsageError, match="neither a reward-model folder nor the run id"):
        load_reward("rlhf-nope")
    assert store.list() == []
    runs = tmp_path / "home" / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_the_magic_binds_the_reward_and_help_lists_the_commands(shell, tiny_bert, separable):
    _, pos, neg = separable
    shell.user_ns["pairs"] = word_pairs(pos, neg, 60)
    assert shell.run_line_magic("rlhf", f"reward --model {tiny_bert} --data pairs --epochs 1 --dtype bfloat16 "
                                        "--out rm") is None
    rm = shell.user_ns["rm"]
    assert len(rm.score(["Review: a", "Review: b"])) == 2 and rm.metrics["steps"] > 0
    from llm_magics.methods.rlhf import RlhfMethod
    text = RlhfMethod.help()
    for word in ("collect", "reward", "ppo", "dpo", "kto", "orpo", "grpo", "rloo", "eval"):
        assert f"%rlhf {word}" in text
    listing = shell.run_line_magic("rlhf", "")
    assert list(listing["run_id"]) == [rm.run_id]


GREEK = ["Κριτική: η ταινία ήταν", "Κριτική: αυτή η ταινία είναι", "Κριτική: η ερμηνεία ήταν", "Κριτική: συνολικά"]


def test_a_reward_model_that_cannot_read_the_policys_text_is_refused_a_callable_is_not_checked(
        tiny_bert, tiny_llama, separable, store, tmp_path):
    _, pos, neg = separable
    rm = api.rlhf.reward(model=str(tiny_bert), data=word_pairs(pos, neg, 40), epochs=1)
    # The tiny BERT's vocabulary is English words and Latin letters: Greek is [UNK] to it, while the
    # policy's byte-level tokenizer reads (and writes) it.
    policy_tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert policy_tok.unk_token_id not in policy_tok(GREEK[0], add_special_tokens=False)["input_ids"]
    unk = rm.tokenizer(GREEK, add_special_tokens=False)["input_ids"]
    assert sum(i == rm.tokenizer.unk_token_id for row in unk for i in row) / sum(map(len, unk)) > 0.5
    rm.check_readable(["Review: the film was", "Review: the acting"], "rm")   # English reads: no error
    with pytest.raises(UsageError) as error:
        api.rlhf.ppo(policy=str(tiny_llama), reward=rm, prompts=GREEK, steps=1, batch_size=4, minibatch_size=4,
                     max_new_tokens=4)
    message = str(error.value)
    assert "\n" not in message and re.search(r"its tokenizer reads (79|8\d|9\d|100)% of the prompts as unknown "
                                              r"tokens; train the reward model on text like the policy's", message)
    assert [(row["method"], row["command"]) for row in store.list()] == [("rlhf", "reward")]   # no ppo run recorded

    # A Python callable is scored as it is: never checked, it runs on the same Greek prompts.
    seen = []

    def reward(prompts, completions):
        seen.extend(prompts)
        return [float(len(c)) for c in completions]
    result = api.rlhf.ppo(policy=str(tiny_llama), reward=reward, prompts=GREEK, steps=1, batch_size=4,
                          minibatch_size=4, max_new_tokens=4)
    assert result.metrics["steps"] == 1 and set(seen) <= set(GREEK) and seen


@pytest.mark.parametrize("train, lr", [("full", 1e-3), ("lora", 1e-2)])
def test_the_score_heads_bias_stays_zero_and_identical_runs_score_alike(tiny_bert, separable, monkeypatch,
                                                                        train, lr):
    """Bradley–Terry cannot see a constant offset: the head's bias gets float noise alone as its gradient,
    which AdamW turned into full-size steps (two identical runs differed by a random constant in
    .score()). It is held at zero, untrained; identical runs give the same scores."""
    from llm_magics.engine import loop
    from llm_magics.models.classifier import HEAD_FILE
    from safetensors.torch import load_file
    _, pos, neg = separable
    seen = []
    real = loop.TrainLoop.run

    def watched(loop):   # the bias the optimizer sees: never asked to train, zero before and after
        biases = [(n, p) for n, p in loop.model.named_parameters() if "head" in n and n.endswith("bias")]
        seen.append([(n, p.requires_grad, float(p.detach().abs().sum())) for n, p in biases])
        outcome = real(loop)
        seen.append([(n, p.requires_grad, float(p.detach().abs().sum())) for n, p in biases])
        return outcome
    monkeypatch.setattr(loop.TrainLoop, "run", watched)
    args = dict(model=str(tiny_bert), data=word_pairs(pos, neg, 120), train=train, lr=lr, epochs=2,
                batch_size=16, dtype="float32", seed=1)
    one, two = api.rlhf.reward(**args), api.rlhf.reward(**args)
    assert seen[0] and all(grad is False and size == 0.0 for run in seen for _, grad, size in run), seen
    for result in (one, two):
        head = load_file(str(Path(result.artifacts["reward_model"]) / HEAD_FILE))
        assert float(head["bias"].abs().sum()) == 0.0 and float(head["weight"].abs().sum()) > 0
        assert result.metrics["test_accuracy"] >= 0.9, result.metrics
    texts = ["Review: " + " ".join(pos[:4]), "Review: " + " ".join(neg[:4]), "Review: a film"]
    assert one.score(texts) == pytest.approx(two.score(texts), abs=1e-4)


def test_per_pair_predictions_are_kept_and_two_reward_runs_pair_up_on_shuffled_pairs(tiny_bert, separable, store):
    """One row per held-out pair keyed by the pair's text: its mean correctness is test_accuracy, the file is in the
    run's folder, and two runs scoring the same pairs in another order pair fully in `compare --paired`."""
    from llm_magics.runs import predictions
    _, pos, neg = separable
    pairs, held = word_pairs(pos, neg, 120), word_pairs(pos, neg, 40, seed=1)
    common = dict(model=str(tiny_bert), data=pairs, batch_size=16, dtype="float32", epochs=1)
    good = api.rlhf.reward(test=held, lr=1e-3, **common)
    weak = api.rlhf.reward(test=held.sample(frac=1, random_state=3), lr=1e-6, **common)
    kept = good.predictions
    assert len(kept) == len(held) and kept["item_id"].is_unique and set(kept["label"]) == {"chosen"}
    assert kept["correct"].mean() == pytest.approx(good.metrics["test_accuracy"], abs=1e-6)
    assert ((kept["score"] > 0.5) == (kept["prediction"] == "chosen")).all()
    on_disk = predictions.load(store.get(good.run_id)["artifacts"][predictions.FILE_KEY])
    assert on_disk["item_id"].tolist() == kept["item_id"].tolist()
    paired = api.compare_paired(good, weak)
    assert paired.paired.shared == len(held) and paired.paired.difference.mean == pytest.approx(
        good.metrics["test_accuracy"] - weak.metrics["test_accuracy"], abs=1e-6)


def test_seeds_give_one_aggregate_of_recorded_reward_runs_and_a_name_is_refused_with_seeds(tiny_bert, separable,
                                                                                          store):
    _, pos, neg = separable
    result = api.rlhf.reward(model=str(tiny_bert), data=word_pairs(pos, neg, 80), test=word_pairs(pos, neg, 30, seed=1),
                             batch_size=16, dtype="float32", epochs=1, lr=1e-3, seeds=2)
    children = [r for r in store.list() if r["parent_id"] == result.run_id]
    assert sorted(r["options"]["seed"] for r in children) == [0, 1]
    # t over the seeds, and (the per-pair predictions on the same held-out pairs) a bootstrap over those pairs
    assert {"test_accuracy_t_low", "test_accuracy_t_high", "test_accuracy_rows_low"} <= set(result.metrics)
    assert "data split" in result.seeded
    with pytest.raises(UsageError, match="--name .* --seeds 2: each seed trains its own adapter") as refused:
        api.rlhf.dpo(policy="x", data=word_pairs(pos, neg, 8), name="mine", seeds=2, method="lora")
    assert "\n" not in str(refused.value)
