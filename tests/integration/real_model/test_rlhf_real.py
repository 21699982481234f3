"""%rlhf on the embedded models (CI-sized): reward model on synthetic SST-2 pairs, DPO with LoRA on smollm2."""
import csv

import numpy as np
import pandas as pd
import pytest

from llm_magics import api

from tests.helpers import need_sst2

pytestmark = pytest.mark.real_model


def clear_reviews(agreement: float = 0.8) -> pd.DataFrame:
    """SST-2 train's whole review sentences whose own labelled sub-phrases agree with their label.

    SST-2 train is phrase-level: besides each review sentence it holds its sub-phrases, each labelled on its
    own. A whole sentence is a phrase that is neither a prefix nor a suffix of another one (parse-tree
    constituents are), starting with a word and ending with . ! or ?: 5,370 of the phrases of 8+ words. A clear
    one is a whole sentence whose sub-phrases of 3+ words found in SST-2 (word-weighted) carry its own label at
    least `agreement` of the time: at 0.8, 4,166 of the 5,370 (2,285 positive). What that drops are mostly mixed
    and sarcastic reviews, whose sub-phrases say the opposite of the whole ("it must be the end of the world : the
    best film so far this year is a franchise sequel starring wesley snipes", positive)."""
    import bisect
    root = need_sst2()
    frame = pd.read_csv(root / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    frame = frame.assign(sentence=frame.sentence.str.strip()).drop_duplicates("sentence")
    label = dict(zip(frame.sentence, frame.label))
    text = sorted(label)
    backwards = sorted(t[::-1] for t in text)

    def extended(ordered, phrase):   # another phrase starts with this one + a space
        i = bisect.bisect_left(ordered, phrase + " ")
        return i < len(ordered) and ordered[i].startswith(phrase + " ")

    def agrees(sentence):
        words, same, total = sentence.split(), 0, 0
        for i in range(len(words)):
            for j in range(i + 3, len(words) + (i > 0)):   # every sub-phrase of 3+ words but the sentence
                sub = label.get(" ".join(words[i:j]))
                if sub is not None:
                    total += j - i
                    same += (j - i) * (sub == label[sentence])
        return total == 0 or same >= agreement * total
    whole = [t for t in text if len(t.split()) >= 8 and t[0].isalnum() and t[-1] in ".!?"
             and not extended(text, t) and not extended(backwards, t[::-1])]
    clear = [t for t in whole if agrees(t)]
    return pd.DataFrame({"sentence": clear, "label": [label[t] for t in clear]})


def review_pairs(reviews: pd.DataFrame, n_train: int, n_test: int, seed: int = 0):
    """(train, held-out) pairs, the positive review over the negative one; no sentence is in both."""
    rng = np.random.default_rng(seed)
    pos = rng.permutation(reviews[reviews.label == 1].sentence.to_numpy())
    neg = rng.permutation(reviews[reviews.label == 0].sentence.to_numpy())

    def pairs(chosen, rejected):
        return pd.DataFrame({"prompt": "Review:", "chosen": [" " + c for c in chosen],
                             "rejected": [" " + r for r in rejected]})
    train_pos, train_neg = pos[n_test:], neg[n_test:]   # reused across pairs when n_train is larger
    train = pairs(train_pos[np.arange(n_train) % len(train_pos)], rng.choice(train_neg, n_train))
    return train, pairs(pos[:n_test], neg[:n_test])


def test_minilm_reward_model_ranks_positive_reviews_first():
    # The target: a clearly learnable synthetic preference set reaches ≥ 0.93 held-out pair accuracy (0.95 until
    # issue 22, below). MiniLM (full, bf16 autocast, 1 epoch, lr 1e-4), 300 held-out pairs (±0.012 standard error):
    #   fragments (≥ 8 words, SST-2's phrase-level labels) 1,800 pairs: 0.940; 2,700: 0.940 — a ceiling;
    #   whole sentences 2,025 pairs: 0.937–0.940 — the misranked pairs mostly mixed or sarcastic reviews;
    #   clear whole sentences (clear_reviews, agreement 0.8), per review_pairs seed 0 / 1 / 2:
    #     1,800 pairs × 1 epoch: 0.933 / 0.970 / –;  × 2 epochs: 0.957;  (agreement 0.9: 0.940 / 0.950)
    #     3,600 pairs × 1 epoch (this test, ~70 s): 0.960 / 0.970 / 0.957.
    #   split 0, model seeds 0 / 1 / 2 (issue 22): 0.937 / 0.950 / 0.943 with the CPU's cheaper dropout masks
    #   (engine/fast_paths.py), 0.957 / 0.947 / 0.943 with nn.Dropout's: the same within a standard error, so the bar
    #   sits below the spread of the draws (0.93), not at 0.95.
    train, test = review_pairs(clear_reviews(0.8), n_train=3600, n_test=300)
    result = api.rlhf.reward(model="minilm", data=train, test=test, train="full", lr=1e-4, epochs=1, batch_size=16,
                             max_length=64, dtype="bfloat16")
    assert result.metrics["test_accuracy"] >= 0.93, result.metrics
    assert result.metrics["test_margin"] > 1.0
    good, bad = result.score(["Review:"] * 2, [" a warm, funny and moving film .", " a dull , lifeless mess ."])
    assert good > bad


def length_matched(pos: np.ndarray, neg: np.ndarray, seed: int):
    """Positive/negative pairs whose two reviews have (nearly) the same number of words, in a seeded order: a
    summed log-prob shifts with an answer's length, so unmatched lengths add noise the sentiment must beat."""
    rng = np.random.default_rng(seed)
    by_length = [words[np.lexsort((rng.random(len(words)), [len(w.split()) for w in words]))] for words in (pos, neg)]
    order = rng.permutation(len(pos))
    return by_length[0][order], by_length[1][order]


def positive_review_pairs() -> pd.DataFrame:
    """160 length-matched pairs of short clear reviews, the positive one chosen, under a prompt that states the
    preference (this test's pairs; benchmarks/rlhf_lora_dtype.py's too)."""
    reviews = clear_reviews(0.8)
    short = reviews[reviews.sentence.str.split().str.len() <= 16]
    pos, neg = length_matched(short[short.label == 1].sample(160, random_state=1).sentence.to_numpy(),
                              short[short.label == 0].sample(160, random_state=1).sentence.to_numpy(), seed=1)
    return pd.DataFrame({"prompt": "Write a positive movie review:", "chosen": [" " + p for p in pos],
                         "rejected": [" " + n for n in neg]})


def test_dpo_lora_on_smollm2_prefers_the_positive_review():
    # The target's size: 24 steps at batch 4 (96 training pairs, each seen once), ≤ 128 tokens, 64 held-out pairs
    # (±0.045 standard error on an accuracy near 0.85). Held-out implicit-reward accuracy measured on this machine
    # for draws of the pairs (sample seed 1 / 2 / 3 / 4 / 5), clear sentences of ≤ 16 words, the prompt below:
    #   lr 1e-3, β 0.5, random pairing: 0.86 / 0.63 / 0.92 — the spread from how far every answer drifts (seed 2:
    #     chosen −5.4, rejected −9.3 nats; the pairs' sums of that drift swamp the sentiment);
    #     --sft-weight 1 (RPO: the chosen answers' NLL beside DPO's loss): 0.78 / 0.80 / 0.83;
    #     --sft-weight 0.2: 0.81 / 0.78 / 0.91; with length-matched pairs: 0.83 / 0.81 / 0.875;
    #   length-matched, --sft-weight 0.2, lr 1.5e-3 (this test): 0.81 / 0.875 / 0.875 / 0.86 / 0.797 — mean 0.84;
    #     β 1: 0.86 / 0.83 / 0.89 / 0.86 / 0.77; lr 2e-3: 0.77 / 0.86 / 0.86 / 0.86 / 0.77;
    #     --sft-weight 0.5 (lr 1e-3): 0.77 / 0.83 / 0.84.
    # The target is ≥ 0.8: met on average and on 4 of 5 draws; asserted is 0.75, below every draw of this test's
    # settings (one pair of 64 is 0.016: a float difference on another CPU must not fail CI).
    # β 0.1 drifted further (chosen −3.6, rejected −8.4 nats at 24 steps); a bare "Review:" prompt stayed near
    # chance. The prompt states the preference, as a preference set does.
    pairs = positive_review_pairs()
    # validation: shown in the live view only (TRL's eval loss); nothing is selected on it
    result = api.rlhf.dpo(policy="smollm2", data=pairs.iloc[:96], test=pairs.iloc[96:], validation=pairs.iloc[96:100],
                          method="lora", steps=24, batch_size=4, max_length=128, lr=1.5e-3, beta=0.5, sft_weight=0.2)
    m = result.metrics
    assert m["test_margin_before"] == 0.0 and m["test_accuracy_before"] == 0.5, m   # the policy starts as its reference
    assert m["test_margin"] > 0 and m["test_chosen_shift"] > m["test_rejected_shift"], m
    assert m["test_accuracy"] >= 0.75, m    # chance, and before training, 0.5 (every margin is exactly 0: ties count half)
    api.lora.unload(name=result.adapter)
