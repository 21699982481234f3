"""Quality at the defaults (issue 22, item 3): `%rlhf dpo` and `%rlhf reward` as shipped vs TRL's `DPOTrainer` /
`RewardTrainer` with their config defaults, on the same SST-2 preference pairs, over 3 draws.

    python benchmarks/rlhf_defaults.py                     # both parts, draws 0 1 2
    python benchmarks/rlhf_defaults.py --part dpo --dpo-ours "lr=5e-5" "beta=0.5,sft_weight=0.2"
                                                           # also our dpo with these options, same draws
    python benchmarks/rlhf_defaults.py --part reward --reward-ours "lr=1e-4"   # the same for the reward model

Measured for docs/rlhf.md (2-core CPU, the two parts side by side, one thread each):
    python benchmarks/rlhf_defaults.py --part dpo --dpo-pairs 64 --dpo-held-out 128 --threads 1 &
    python benchmarks/rlhf_defaults.py --part reward --reward-pairs 2000 --reward-held-out 300 --threads 1

Pairs: prompt "Review:", chosen = a positive SST-2 review sentence, rejected = a negative one, randomly paired.
The sentences are SST-2 train's *whole* sentences (phrases of 8+ words starting with a word and ending with
. ! or ?, neither prefix nor suffix of another phrase: 5,370), not filtered for clarity and not length-matched.
Each draw (0, 1, 2) shuffles them with its own seed: the held-out sentences come first, then a few validation
ones, the training pairs from the rest, so no sentence is in two splits. Both sides train on exactly the same
pairs, once (1 epoch), in batches of the same size; ours gets the validation pairs as --validation (otherwise it
would split 10% off its training pairs: it only shows them, dpo, or evaluates once at the end, reward).

Everything else is each side's default: ours as `api.rlhf.dpo(policy="smollm2", data=..., test=...)` and
`api.rlhf.reward(model="minilm", ...)`; TRL's `DPOConfig()` / `RewardConfig()` with only the output, the batch,
the epochs, the seed and `use_cpu` set (and gradient checkpointing off: the same numbers, less time).
Scored one way for both sides:
  dpo    held-out implicit-reward accuracy: the pair's log p(chosen)/p_ref(chosen) above log p(rejected)/
         p_ref(rejected) (trl_bridge.pair_logprobs on the trained policy and on a fresh copy of the base)
  reward held-out pair accuracy: the chosen review's score above the rejected one's (preference.reward.rewards)
The seconds printed per draw are ours end to end (loading, reference pass, held-out scoring, saving) and TRL's
`train()` alone: not a speed comparison (benchmarks/rlhf.py is one).
"""
from __future__ import annotations

import argparse
import bisect
import csv
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import add_threads_option, set_threads, timed  # noqa: E402

SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "sst2"
PROMPT = "Review:"


def whole_reviews() -> pd.DataFrame:
    """SST-2 train's whole review sentences (tests/integration/real_model/test_rlhf_real.py's `clear_reviews`
    without its clarity filter)."""
    frame = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE)
    frame = frame.assign(sentence=frame.sentence.str.strip()).drop_duplicates("sentence")
    label = dict(zip(frame.sentence, frame.label))
    text = sorted(label)
    backwards = sorted(t[::-1] for t in text)

    def extended(ordered, phrase):   # another phrase starts with this one + a space
        i = bisect.bisect_left(ordered, phrase + " ")
        return i < len(ordered) and ordered[i].startswith(phrase + " ")
    whole = [t for t in text if len(t.split()) >= 8 and t[0].isalnum() and t[-1] in ".!?"
             and not extended(text, t) and not extended(backwards, t[::-1])]
    return pd.DataFrame({"sentence": whole, "label": [label[t] for t in whole]})


def draw_pairs(reviews: pd.DataFrame, n_train: int, n_test: int, n_val: int, seed: int):
    """(train, validation, held-out) pairs, the positive review over the negative one; no sentence in two."""
    rng = np.random.default_rng(seed)
    pos = rng.permutation(reviews[reviews.label == 1].sentence.to_numpy())
    neg = rng.permutation(reviews[reviews.label == 0].sentence.to_numpy())

    def pairs(chosen, rejected):
        return pd.DataFrame({"prompt": PROMPT, "chosen": [" " + c for c in chosen],
                             "rejected": [" " + r for r in rejected]})
    rest = n_test + n_val
    train_pos, train_neg = pos[rest:], neg[rest:]   # reused across pairs when n_train is larger
    if n_train > min(len(train_pos), len(train_neg)) * 2:
        raise SystemExit(f"{n_train} training pairs is too many for {len(train_pos)} / {len(train_neg)} sentences")
    train = pairs(train_pos[np.arange(n_train) % len(train_pos)], rng.choice(train_neg, n_train))
    return train, pairs(pos[n_test:rest], neg[n_test:rest]), pairs(pos[:n_test], neg[:n_test])


def quiet():
    warnings.simplefilter("ignore")
    from transformers.utils import logging
    logging.set_verbosity_error()


# ---------------------------------------------------------------- DPO

def dpo_accuracy(policy, reference_lp, tok, test, max_length: int) -> dict[str, float]:
    """The one scoring function of both sides: held-out implicit-reward accuracy and the log-prob shifts."""
    from llm_magics.preference.trl_bridge import implicit_rewards, pair_logprobs
    got = implicit_rewards(pair_logprobs(policy, tok, test, max_length), reference_lp, 1.0, "test")
    return {"accuracy": got["test_accuracy"], "chosen": got["test_chosen_shift"],
            "rejected": got["test_rejected_shift"]}


def parse_overrides(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        key = key.strip().replace("-", "_")
        out[key] = value if key in ("method", "train") else int(value) if key in ("epochs", "steps") else float(value)
    return out


def ours_dpo(train, val, test, seed, reference_lp, tok, max_length, **overrides) -> dict:
    from llm_magics import api
    result, seconds = timed(lambda: api.rlhf.dpo(policy="smollm2", data=train, validation=val, test=test, seed=seed,
                                                 **overrides))
    got = dpo_accuracy(result._model, reference_lp, tok, test, max_length)
    own = result.metrics["test_accuracy"]
    if abs(own - got["accuracy"]) > 0.011:   # its own held-out figure is the same measure (fp32 both)
        print(f"  note: ours reports test_accuracy {own:.3f}, the shared scorer {got['accuracy']:.3f}")
    if getattr(result, "adapter", None):
        api.lora.unload(name=result.adapter)
    result.release()
    return {**got, "seconds": seconds}


def trl_dpo(train, test, seed, reference_lp, tok, max_length, batch: int) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llm_magics.models import resolve
    model = AutoModelForCausalLM.from_pretrained(resolve("smollm2").path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=1, seed=seed,
                           use_cpu=True, gradient_checkpointing=False, report_to=[], save_strategy="no",
                           disable_tqdm=True, logging_steps=10_000)
        trainer = DPOTrainer(model=model, args=config, processing_class=tok,
                             train_dataset=datasets.Dataset.from_pandas(train, preserve_index=False))
        _, seconds = timed(trainer.train)
    got = dpo_accuracy(trainer.model.eval(), reference_lp, tok, test, max_length)
    return {**got, "seconds": seconds, "settings": config}


def bench_dpo(args, reviews) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    from llm_magics.methods.rlhf.options import DpoOptions
    from llm_magics.models import load_tokenizer, resolve
    from llm_magics.preference.trl_bridge import pair_logprobs
    defaults = DpoOptions()
    source = resolve("smollm2")
    tok = load_tokenizer(source)
    reference = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32).eval()
    rows = []
    for draw in args.draws:
        train, val, test = draw_pairs(reviews, args.dpo_pairs, args.dpo_held_out, 16, seed=draw)
        reference_lp = pair_logprobs(reference, tok, test, defaults.max_length)
        row = {"draw": draw}
        torch.manual_seed(draw)
        row["ours"] = ours_dpo(train, val, test, draw, reference_lp, tok, defaults.max_length)
        torch.manual_seed(draw)
        row["trl"] = trl_dpo(train, test, draw, reference_lp, tok, defaults.max_length, defaults.batch_size)
        for spec in args.dpo_ours:
            torch.manual_seed(draw)
            row[spec] = ours_dpo(train, val, test, draw, reference_lp, tok, defaults.max_length,
                                 **parse_overrides(spec))
        rows.append(row)
        print(f"dpo draw {draw}: " + ", ".join(f"{k} {v['accuracy']:.3f} (chosen {v['chosen']:+.2f}, rejected "
                                               f"{v['rejected']:+.2f} nats, {v['seconds']:.0f} s)"
                                               for k, v in row.items() if k != "draw"), flush=True)
    c = rows[0]["trl"]["settings"]
    print(f"dpo settings: ours = DpoOptions defaults: --method {defaults.method}, β {defaults.beta}, lr "
          f"{defaults.peak_lr():g}, --sft-weight {defaults.sft_weight}, warmup {defaults.warmup}, weight decay "
          f"{defaults.weight_decay}, batch {defaults.batch_size}, {defaults.epochs} epoch, max length "
          f"{defaults.max_length}, fp32 (CPU); TRL = DPOConfig defaults: full, β {c.beta}, lr {c.learning_rate:g}, "
          f"loss {c.loss_type}, warmup {c.warmup_steps}, weight decay {c.weight_decay}, bf16 {c.bf16}, max length "
          f"{c.max_length}, but batch {c.per_device_train_batch_size} and {c.num_train_epochs:g} epoch (ours), "
          f"gradient checkpointing {c.gradient_checkpointing}")
    return rows


# ---------------------------------------------------------------- reward

def reward_accuracy(model, tok, test, max_length: int) -> float:
    """The one scoring function of both sides: the chosen review's score above the rejected one's (ties half)."""
    import torch

    from llm_magics.preference.reward import encode, pair_metrics, rewards
    ids_c = encode(tok, (test.prompt + test.chosen).tolist(), max_length)
    ids_r = encode(tok, (test.prompt + test.rejected).tolist(), max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    scores = rewards(model.eval(), ids_c + ids_r, pad, torch.device("cpu"))
    return pair_metrics(scores[:len(ids_c)], scores[len(ids_c):], "test")["test_accuracy"]


def ours_reward(train, val, test, seed, max_length, **overrides) -> dict:
    from llm_magics import api
    result, seconds = timed(lambda: api.rlhf.reward(model="minilm", data=train, validation=val, test=test,
                                                    seed=seed, **overrides))
    accuracy = reward_accuracy(result._model, result._tokenizer, test, max_length)
    result.release()
    return {"accuracy": accuracy, "seconds": seconds}


def trl_reward(train, test, seed, max_length, batch: int) -> dict:
    """RewardTrainer on the same pairs, pre-tokenized as ours reads them (whole sentences: nothing is cut),
    with the separator as EOS (BERT has none for it to append); RewardConfig's defaults otherwise."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from llm_magics.models import resolve
    from llm_magics.preference.reward import encode
    folder = resolve("minilm").path
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = tok.sep_token
    ds = datasets.Dataset.from_dict({"chosen_ids": encode(tok, (train.prompt + train.chosen).tolist(), max_length),
                                     "rejected_ids": encode(tok, (train.prompt + train.rejected).tolist(),
                                                            max_length)})
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=1, seed=seed,
                              use_cpu=True, gradient_checkpointing=False, report_to=[], save_strategy="no",
                              disable_tqdm=True, logging_steps=10_000)
        trainer = RewardTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
        _, seconds = timed(trainer.train)
    return {"accuracy": reward_accuracy(trainer.model, tok, test, max_length), "seconds": seconds,
            "settings": config}


def bench_reward(args, reviews) -> list[dict]:
    from llm_magics.methods.rlhf.options import RewardOptions
    defaults = RewardOptions()
    rows = []
    for draw in args.draws:
        train, val, test = draw_pairs(reviews, args.reward_pairs, args.reward_held_out, 100, seed=draw)
        row = {"draw": draw, "ours": ours_reward(train, val, test, draw, defaults.max_length),
               "trl": trl_reward(train, test, draw, defaults.max_length, defaults.batch_size)}
        for spec in args.reward_ours:
            row[spec] = ours_reward(train, val, test, draw, defaults.max_length, **parse_overrides(spec))
        rows.append(row)
        print(f"reward draw {draw}: " + ", ".join(f"{k} {v['accuracy']:.3f} ({v['seconds']:.0f} s)"
                                                  for k, v in row.items() if k != "draw"), flush=True)
    c = rows[0]["trl"]["settings"]
    print(f"reward settings: ours = RewardOptions defaults: --train {defaults.train}, lr {defaults.peak_lr():g}, "
          f"warmup {defaults.warmup}, weight decay {defaults.weight_decay}, batch {defaults.batch_size}, "
          f"{defaults.epochs} epoch, max length {defaults.max_length}, fp32 (CPU), mean pooling; TRL = RewardConfig "
          f"defaults: full, lr {c.learning_rate:g}, warmup {c.warmup_steps}, weight decay {c.weight_decay}, bf16 "
          f"{c.bf16}, center_rewards_coefficient {c.center_rewards_coefficient}, [CLS] head, but batch "
          f"{c.per_device_train_batch_size} and {c.num_train_epochs:g} epoch (ours), gradient checkpointing "
          f"{c.gradient_checkpointing}")
    return rows


def table(dpo: list[dict], reward: list[dict]) -> str:
    extra = [k for k in (dpo[0] if dpo else {}) if k not in ("draw", "ours", "trl")]
    more = [k for k in (reward[0] if reward else {}) if k not in ("draw", "ours", "trl")]
    head = ["draw"]
    if dpo:
        head += ["dpo ours", "dpo TRL"] + [f"dpo ours {k}" for k in extra]
    if reward:
        head += ["reward ours", "reward TRL"] + [f"reward ours {k}" for k in more]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    draws = [r["draw"] for r in (dpo or reward)]

    def cells(rows, keys, i):
        return [f"{rows[i][k]['accuracy']:.3f}" for k in keys] if rows else []

    def means(rows, keys):
        return [f"**{np.mean([r[k]['accuracy'] for r in rows]):.3f}**" for k in keys] if rows else []
    for i, draw in enumerate(draws):
        lines.append("| " + " | ".join([str(draw)] + cells(dpo, ["ours", "trl"] + extra, i)
                                      + cells(reward, ["ours", "trl"] + more, i)) + " |")
    lines.append("| " + " | ".join(["mean"] + means(dpo, ["ours", "trl"] + extra)
                                   + means(reward, ["ours", "trl"] + more)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("dpo", "reward", "all"), default="all")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dpo-pairs", type=int, default=64, help="training pairs (1 epoch)")
    parser.add_argument("--dpo-held-out", type=int, default=128)
    parser.add_argument("--dpo-ours", nargs="*", default=[], metavar="OPTS",
                        help='our dpo again with these options, e.g. "lr=5e-5,beta=0.5,sft_weight=0.2"')
    parser.add_argument("--reward-pairs", type=int, default=2000, help="training pairs (1 epoch)")
    parser.add_argument("--reward-held-out", type=int, default=300)
    parser.add_argument("--reward-ours", nargs="*", default=[], metavar="OPTS",
                        help='our reward model again with these options, e.g. "lr=1e-4"')
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
    quiet()
    started = time.perf_counter()
    reviews = whole_reviews()
    print(f"{len(reviews)} whole SST-2 sentences ({int(reviews.label.sum())} positive); draws {args.draws}")
    reward = bench_reward(args, reviews) if args.part in ("reward", "all") else []
    dpo = bench_dpo(args, reviews) if args.part in ("dpo", "all") else []
    print(f"held-out accuracy (dpo: implicit reward on {args.dpo_held_out} pairs after {args.dpo_pairs} training "
          f"pairs; reward: pair accuracy on {args.reward_held_out} pairs after {args.reward_pairs}); chance 0.5")
    print(table(dpo, reward))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
