"""`%rlhf dpo|ppo --method lora` and `%rlhf reward --train lora|head` with the frozen base in bf16 (the CPU default since
issue 22) against the same run with `--dtype float32` (the old CPU default), same seeds, each in its own process:
training seconds (reward: tokens/s), peak memory, and the quality figure the real-model tests assert.

    python benchmarks/rlhf_lora_dtype.py --part dpo --seeds 0 1 2
    python benchmarks/rlhf_lora_dtype.py --part ppo --seeds 0 1
    python benchmarks/rlhf_lora_dtype.py --part reward --seeds 0 1
    python benchmarks/rlhf_lora_dtype.py --part reward-head --seeds 0 1   # the head alone on the frozen base

Settings and data are the real-model tests' (tests/integration/real_model/test_rlhf_real.py's DPO LoRA on
length-matched SST-2 pairs; test_rlhf_ppo_real.py's PPO against a MiniLM sentiment probe), with the seed
varied. DPO: held-out implicit-reward accuracy (64 pairs; one pair is 0.016); PPO: the rise of the sampled
completions' positive probability, first 3 steps against the last 3; reward: MiniLM with LoRA (or its head alone) on 1,200 of
test_rlhf_real.py's clear review pairs, held-out pair accuracy on 300. Needs ../shared/data/sst2 and the
embedded models.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dpo(seed: int, dtype: str) -> dict:
    from llm_magics import api
    from tests.integration.real_model.test_rlhf_real import positive_review_pairs
    pairs = positive_review_pairs()
    result = api.rlhf.dpo(policy="smollm2", data=pairs.iloc[:96], test=pairs.iloc[96:],
                          validation=pairs.iloc[96:100], method="lora", steps=24, batch_size=4, max_length=128,
                          lr=1.5e-3, beta=0.5, sft_weight=0.2, seed=seed, dtype=dtype)
    return {"quality": result.metrics["test_accuracy"], "train_s": result.metrics["train_seconds"],
            "peak_mb": result.peak_mem_bytes / 2**20, "dtype": result.dtype}


def ppo(seed: int, dtype: str) -> dict:
    from llm_magics import api
    from tests.integration.real_model.test_rlhf_ppo_real import SETTINGS, sst2
    train = sst2("train")
    sentiment = api.probe(model="minilm", data=train[train.sentence.str.split().str.len() >= 6]
                          .sample(600, random_state=0))

    def positive(prompts, completions):
        return sentiment.predict_proba(list(completions))["1"].tolist()
    openings = [" ".join(s.split()[:4]) for s in sst2("test").sentence.sample(64, random_state=0)]
    started = time.perf_counter()
    result = api.rlhf.ppo(policy="smollm2", reward=positive, prompts=openings, **{**SETTINGS, "seed": seed},
                          dtype=dtype)
    return {"quality": result.metrics["reward_gain"], "train_s": time.perf_counter() - started,
            "peak_mb": result.peak_mem_bytes / 2**20, "dtype": result.dtype}


def reward(seed: int, dtype: str, train_what: str = "lora") -> dict:
    from llm_magics import api
    from tests.integration.real_model.test_rlhf_real import clear_reviews, review_pairs
    train, test = review_pairs(clear_reviews(0.8), n_train=1200, n_test=300)
    result = api.rlhf.reward(model="minilm", data=train, test=test, train=train_what, epochs=1, batch_size=16,
                             max_length=64, seed=seed, dtype=dtype)
    return {"quality": result.metrics["test_accuracy"], "tokens_per_s": result.tokens_per_s,
            "peak_mb": result.peak_mem_bytes / 2**20, "dtype": result.dtype}


PARTS = {"dpo": (dpo, "train s", "held-out accuracy"), "ppo": (ppo, "train s", "reward gain"),
         "reward": (reward, "tokens/s", "held-out accuracy"),
         "reward-head": (lambda seed, dtype: reward(seed, dtype, "head"), "tokens/s", "held-out accuracy")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=tuple(PARTS), default="dpo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--one", nargs=2, metavar=("SEED", "DTYPE"), help=argparse.SUPPRESS)   # a subprocess
    args = parser.parse_args()
    if args.one:
        os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
        sys.path.insert(0, str(ROOT))
        print(json.dumps(PARTS[args.part][0](int(args.one[0]), args.one[1])))
        return 0
    _, speed, figure = PARTS[args.part]
    print(f"| seed | dtype | computed in | {speed} | peak MiB | {figure} |\n|---|---|---|---|---|---|")
    for seed in args.seeds:
        for dtype in ("auto", "float32"):
            out = subprocess.run([sys.executable, __file__, "--part", args.part, "--one", str(seed), dtype],
                                 capture_output=True, text=True, check=True, cwd=ROOT).stdout
            row = json.loads(out.strip().splitlines()[-1])
            pace = f"{row['train_s']:.1f}" if "train_s" in row else f"{row['tokens_per_s']:,.0f}"
            print(f"| {seed} | {dtype} | {row['dtype']} | {pace} | {row['peak_mb']:,.0f} | "
                  f"{row['quality']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
