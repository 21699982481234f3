"""%rlhf against the usual alternatives, each ratio measured in one run with the same model, data and dtype.

    python benchmarks/rlhf.py --part reward   # our reward model vs TRL RewardTrainer: pairs/s, held-out accuracy
    python benchmarks/rlhf.py --part dpo      # %rlhf dpo (TRL, our settings) vs TRL DPOTrainer defaults: steps/s;
                                              # LoRA vs full peak memory
    python benchmarks/rlhf.py --part ppo      # PPO rollout tokens/s vs a plain model.generate loop
    python benchmarks/rlhf.py                 # all three

Sizes default to the CI-sized figures of issue 11 (--pairs 1000 --held-out 300 --max-length 256 for the reward
model); pass smaller ones on a busy machine. Needs ../shared/data/hh_rlhf_harmless and the embedded models.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import add_threads_option, set_threads, timed  # noqa: E402

HH = Path(os.environ.get("LLM_MAGICS_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / \
    "hh_rlhf_harmless" / "test.jsonl.gz"


def peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def hh_pairs(n: int, seed: int = 0):
    import pandas as pd

    from llm_magics.rlhf.data import normalize_preferences
    frame = normalize_preferences(pd.read_json(HH, lines=True, compression="gzip"))
    return frame.sample(n, random_state=seed).reset_index(drop=True)


def bench_reward(args) -> None:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from llm_magics import api
    from llm_magics.models import resolve
    from llm_magics.rlhf.reward import encode, pair_metrics, rewards
    pairs = hh_pairs(args.pairs + args.held_out)
    train, test = pairs.iloc[:args.pairs], pairs.iloc[args.pairs:]
    ours, ours_s = timed(lambda: api.rlhf.reward(model="minilm", data=train, test=test, validation=test.head(50),
                                                 train="full", lr=args.reward_lr, epochs=1, batch_size=8,
                                                 max_length=args.max_length, dtype="bfloat16"))
    # Same dtype on both sides: bf16 autocast (TRL's default, native on this CPU); TRL keeps its other
    # defaults (gradient checkpointing on).
    print(f"ours  : held-out pair accuracy {ours.metrics['test_accuracy']:.3f} "
          f"(before {ours.metrics.get('val_accuracy_before', float('nan')):.3f} on validation), "
          f"{args.pairs / ours_s:.1f} pairs/s end to end, {ours.rows_per_s / 1:.1f} pairs/s training")
    folder = resolve("minilm").path
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = tok.sep_token          # RewardTrainer needs one; BERT has none
    chosen = encode(tok, (train.prompt + train.chosen).tolist(), args.max_length)
    rejected = encode(tok, (train.prompt + train.rejected).tolist(), args.max_length)
    ds = datasets.Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(output_dir=tmp, per_device_train_batch_size=8, num_train_epochs=1,
                              max_length=args.max_length, report_to=[], save_strategy="no", logging_steps=50,
                              disable_tqdm=True, use_cpu=True, learning_rate=args.reward_lr)
        trainer = RewardTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
        _, trl_s = timed(trainer.train)
    ids_c = encode(tok, (test.prompt + test.chosen).tolist(), args.max_length)
    ids_r = encode(tok, (test.prompt + test.rejected).tolist(), args.max_length)
    scores = rewards(model, ids_c + ids_r, tok.pad_token_id, torch.device("cpu"))
    trl = pair_metrics(scores[:len(ids_c)], scores[len(ids_c):], "test")
    print(f"TRL   : held-out pair accuracy {trl['test_accuracy']:.3f}, {args.pairs / trl_s:.1f} pairs/s "
          f"(defaults: gradient checkpointing {config.gradient_checkpointing}, bf16 {config.bf16})")
    print(f"reward: accuracy ours − TRL {ours.metrics['test_accuracy'] - trl['test_accuracy']:+.3f}; "
          f"pairs/s ours/TRL {trl_s / ours_s:.2f}× (goal ≥ 1.3×)")


def bench_dpo(args) -> None:
    from llm_magics import api
    from llm_magics.models import free
    pairs = hh_pairs(args.dpo_pairs + 16, seed=1)
    train, test = pairs.iloc[:args.dpo_pairs], pairs.iloc[args.dpo_pairs:]
    rates, memory = {}, {}
    for method in ("lora", "full"):
        before = peak_rss()
        result, seconds = timed(lambda: api.rlhf.dpo(policy="smollm2", data=train, test=test,
                                                    validation=test.head(4), method=method, steps=args.dpo_steps,
                                                    batch_size=4, max_length=128))
        runtime = result.history["train_runtime"].dropna() if "train_runtime" in result.history else []
        # Training time as TRL measures it (loading and the held-out evaluation excluded), as for TRL below.
        rates[method] = args.dpo_steps / (float(runtime.iloc[-1]) if len(runtime) else seconds)
        memory[method] = max(peak_rss(), before)
        print(f"%rlhf dpo {method:4s}: {rates[method]:.3f} steps/s, held-out margin "
              f"{result.metrics['test_margin']:+.4f}, chosen shift {result.metrics['test_chosen_shift']:+.3f}, "
              f"rejected {result.metrics['test_rejected_shift']:+.3f}; peak RSS {memory[method] / 2**30:.2f} GiB")
        del result
        free()
        gc.collect()
    # TRL with its own defaults (gradient checkpointing on, bf16 on), same model, data, LoRA, batch.
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llm_magics.models import load_tokenizer, resolve
    source = resolve("smollm2")
    model = AutoModelForCausalLM.from_pretrained(source.path)
    tok = load_tokenizer(source)
    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=4, max_steps=args.dpo_steps, max_length=128,
                           report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=50)
        trainer = DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_pandas(train),
                             processing_class=tok, peft_config=LoraConfig(r=16, lora_alpha=32,
                                                                          target_modules="all-linear"))
        _, seconds = timed(trainer.train)
    trl_rate = args.dpo_steps / seconds
    print(f"TRL DPOTrainer defaults (LoRA): {trl_rate:.3f} steps/s (checkpointing {config.gradient_checkpointing}, "
          f"bf16 {config.bf16})")
    print(f"dpo: steps/s ours/TRL {rates['lora'] / trl_rate:.2f}× (goal ≥ 1.3×); LoRA peak / full peak "
          f"{memory['lora'] / memory['full']:.2f} (goal ≤ 0.8; RSS peaks are process-wide, run --part dpo alone)")


def bench_ppo(args) -> None:
    import torch

    from llm_magics.models import load_model, resolve
    from llm_magics.rlhf.ppo import PolicyWithValue
    loaded = load_model(resolve("smollm2"), "causal_lm", torch.device("cpu"), torch.float32)
    prompts = ["Review: the film was", "Review: I thought this movie", "Review: the acting",
               "Review: overall"] * 2
    policy = PolicyWithValue(loaded.model, loaded.tokenizer)
    policy.rollout(prompts, 4)   # warm up
    torch.manual_seed(0)
    roll, ours_s = timed(lambda: policy.rollout(prompts, args.new_tokens))
    ours_tokens = int(roll.mask.sum())
    tok = loaded.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)

    def plain():
        with torch.no_grad():
            return loaded.model.generate(**enc, do_sample=True, top_k=0, max_new_tokens=args.new_tokens,
                                         pad_token_id=tok.pad_token_id)
    out, plain_s = timed(plain)
    plain_tokens = (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts)
    print(f"ppo rollout: ours {ours_tokens / ours_s:.1f} new tokens/s, plain generate {plain_tokens / plain_s:.1f} "
          f"(ratio {(ours_tokens / ours_s) / (plain_tokens / plain_s):.2f}×, goal ≥ 1.0×); peak RSS "
          f"{peak_rss() / 2**30:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("reward", "dpo", "ppo", "all"), default="all")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--reward-lr", type=float, default=5e-5)
    parser.add_argument("--dpo-pairs", type=int, default=96)
    parser.add_argument("--dpo-steps", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=24)
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
    started = time.perf_counter()
    for part, fn in (("reward", bench_reward), ("dpo", bench_dpo), ("ppo", bench_ppo)):
        if args.part in (part, "all"):
            fn(args)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
