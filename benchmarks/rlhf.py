"""%rlhf against the usual alternatives, each ratio measured in one run with the same model, data and dtype.

    python benchmarks/rlhf.py --part reward   # our reward model vs TRL RewardTrainer: pairs/s, held-out accuracy
    python benchmarks/rlhf.py --part dpo      # %rlhf dpo (TRL, our settings) vs TRL DPOTrainer with its defaults and
                                              # without gradient checkpointing: steps/s; LoRA vs full peak memory
                                              # (each variant in its own process)
    python benchmarks/rlhf.py --part ppo      # PPO rollout tokens/s vs a plain model.generate loop; our PPO vs TRL
                                              # RLOOTrainer: samples/s and peak memory (own processes)
    python benchmarks/rlhf.py --part rollout  # the rollout comparison alone (interleaved rounds)
    python benchmarks/rlhf.py                 # all three

Sizes default to the CI-sized figures of issue 11 (--pairs 1000 --held-out 300 --max-length 256 for the reward
model); pass smaller ones on a busy machine. Needs ../shared/data/hh_rlhf_harmless and the embedded models.
"""
from __future__ import annotations

import argparse
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

    from llm_magics.preference.data import normalize_preferences
    frame = normalize_preferences(pd.read_json(HH, lines=True, compression="gzip"))
    return frame.sample(n, random_state=seed).reset_index(drop=True)


def trl_reward(train, test, args, checkpointing: bool) -> dict:
    """TRL RewardTrainer on the same pairs, pre-tokenized with our left truncation (it would drop long pairs,
    and BERT has no EOS for it to append); same model, batch, epochs, learning rate and bf16 autocast."""
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from llm_magics.models import resolve
    from llm_magics.preference.reward import encode, pair_metrics, rewards
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
        config = RewardConfig(output_dir=tmp, per_device_train_batch_size=args.reward_batch,
                              num_train_epochs=args.reward_epochs, max_length=args.max_length, report_to=[],
                              save_strategy="no", logging_steps=1000, disable_tqdm=True, use_cpu=True,
                              learning_rate=args.reward_lr, gradient_checkpointing=checkpointing, bf16=True)
        trainer = RewardTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
        out, seconds = timed(trainer.train)
    ids_c = encode(tok, (test.prompt + test.chosen).tolist(), args.max_length)
    ids_r = encode(tok, (test.prompt + test.rejected).tolist(), args.max_length)
    scores = rewards(model.eval(), ids_c + ids_r, tok.pad_token_id, torch.device("cpu"))
    return {"accuracy": pair_metrics(scores[:len(ids_c)], scores[len(ids_c):], "test")["test_accuracy"],
            "train_pairs_s": len(train) * args.reward_epochs / out.metrics["train_runtime"], "seconds": seconds}


def bench_reward(args) -> None:
    """%rlhf reward (minilm, full, bf16 autocast) vs TRL RewardTrainer on hh_rlhf_harmless: training pairs/s
    (training loop only on both sides; ours also end to end) and held-out pair accuracy, in one run."""
    from llm_magics import api
    pairs = hh_pairs(args.pairs + args.held_out + 50)
    train, test = pairs.iloc[:args.pairs], pairs.iloc[args.pairs:args.pairs + args.held_out]
    validation = pairs.iloc[args.pairs + args.held_out:]     # apart from the held-out pairs
    ours, ours_s = timed(lambda: api.rlhf.reward(model="minilm", data=train, test=test, validation=validation,
                                                 train="full", lr=args.reward_lr, epochs=args.reward_epochs,
                                                 batch_size=args.reward_batch, max_length=args.max_length,
                                                 dtype="bfloat16"))
    print(f"reward ours : held-out pair accuracy {ours.metrics['test_accuracy']:.3f}, "
          f"{ours.rows_per_s:.1f} pairs/s training, {len(train) * args.reward_epochs / ours_s:.1f} pairs/s end to "
          f"end (loading, evaluation and saving included; {ours_s:.0f} s)")
    for checkpointing in (True, False)[:1 if args.reward_trl_defaults_only else 2]:
        trl = trl_reward(train, test, args, checkpointing)
        print(f"reward TRL  : held-out pair accuracy {trl['accuracy']:.3f}, {trl['train_pairs_s']:.1f} pairs/s "
              f"training ({trl['seconds']:.0f} s; gradient checkpointing {checkpointing}"
              f"{' = its default' if checkpointing else ''}, bf16)")
        print(f"reward      : ours/TRL{'' if checkpointing else ' (no checkpointing)'} "
              f"{ours.rows_per_s / trl['train_pairs_s']:.2f}× training pairs/s (goal ≥ 1.3× vs defaults), "
              f"accuracy ours − TRL {ours.metrics['test_accuracy'] - trl['accuracy']:+.3f}")


DPO_VARIANTS = ("ours-lora", "ours-full", "trl-defaults", "trl-no-checkpointing")
PPO_VARIANTS = ("ppo-ours", "rloo-trl")


def child(variant: str, args) -> dict:
    """Run one variant in its own process (`--child`) and return what it measured: RSS peaks are per process."""
    import json
    import subprocess
    command = [sys.executable, __file__, "--child", variant, "--dpo-pairs", str(args.dpo_pairs), "--dpo-steps",
               str(args.dpo_steps), "--dpo-dtype", args.dpo_dtype, "--new-tokens", str(args.new_tokens),
               "--ppo-steps", str(args.ppo_steps)] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{variant} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][7:])


def dpo_child(variant: str, args) -> dict:
    """One DPO variant, same model, data, LoRA config (r 16, α 32, no dropout, all linear layers), batch 4,
    128 tokens, dtype; seconds = data preparation (tokenising, any reference pass) + training, loading and
    our held-out evaluation excluded."""
    import torch
    pairs = hh_pairs(args.dpo_pairs + 16, seed=1)
    train, test = pairs.iloc[:args.dpo_pairs], pairs.iloc[args.dpo_pairs:]
    bf16 = args.dpo_dtype == "bfloat16"
    if variant.startswith("ours"):
        from llm_magics import api
        result = api.rlhf.dpo(policy="smollm2", data=train, test=test, validation=test.head(4),
                              method=variant.split("-")[1], steps=args.dpo_steps, batch_size=4, max_length=128,
                              dtype=args.dpo_dtype)
        m = result.metrics
        return {"seconds": m["train_seconds"], "margin": m["test_margin"], "chosen": m["test_chosen_shift"],
                "rejected": m["test_rejected_shift"], "peak_rss": peak_rss(), "checkpointing": False, "bf16": bf16}
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from llm_magics.models import load_tokenizer, resolve
    source = resolve("smollm2")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32)
    tok = load_tokenizer(source)
    extra = {} if variant == "trl-defaults" else {"gradient_checkpointing": False}
    with tempfile.TemporaryDirectory() as tmp:
        # TRL's defaults, but for the data (left truncation as ours: HH prompts are long), the learning rate
        # (ours, for LoRA) and the dtype of this run (bf16 is TRL's default).
        config = DPOConfig(output_dir=tmp, per_device_train_batch_size=4, max_steps=args.dpo_steps, max_length=128,
                           truncation_mode="keep_end", learning_rate=5e-4, bf16=bf16, report_to=[],
                           save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=50, **extra)
        peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        start = time.perf_counter()
        trainer = DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_pandas(train),
                             processing_class=tok, peft_config=peft)
        trainer.train()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": peak_rss(), "checkpointing": config.gradient_checkpointing,
            "bf16": config.bf16}


def bench_dpo(args) -> None:
    got = {variant: child(variant, args) for variant in DPO_VARIANTS}
    print(f"DPO on smollm2, {args.dpo_steps} steps × 4 hh_rlhf_harmless pairs, 128 tokens, LoRA r16 (all linear), "
          f"dtype {args.dpo_dtype}; seconds = data preparation + training")
    print("ours: one packed row per pair (its prompt once), each prompt cut to fit the longer answer; TRL: prompt+chosen "
          "and prompt+rejected, each cut from the left to 128 tokens on its own")
    print(f"{'variant':22s} {'steps/s':>8s} {'seconds':>8s} {'peak RSS':>9s}  settings")
    for variant, r in got.items():
        extra = (f", held-out margin {r['margin']:+.4f} (chosen shift {r['chosen']:+.3f}, rejected "
                 f"{r['rejected']:+.3f})") if "margin" in r else ""
        print(f"{variant:22s} {args.dpo_steps / r['seconds']:8.3f} {r['seconds']:8.1f} {r['peak_rss'] / 2**30:7.2f}G  "
              f"checkpointing {r['checkpointing']}, bf16 {r['bf16']}{extra}")
    ours = got["ours-lora"]["seconds"]
    print(f"dpo: steps/s ours/TRL defaults {got['trl-defaults']['seconds'] / ours:.2f}× (goal ≥ 1.3×); ours/TRL "
          f"without checkpointing {got['trl-no-checkpointing']['seconds'] / ours:.2f}× (goal ≥ 1.0×); LoRA peak / "
          f"full peak {got['ours-lora']['peak_rss'] / got['ours-full']['peak_rss']:.2f} (goal ≤ 0.8)")


PPO_PROMPTS = ["Review: the film was", "Review: I thought this movie", "Review: the acting", "Review: overall"]


def ppo_child(variant: str, args) -> dict:
    """PPO (ours, LoRA r8, 4 epochs of 2 minibatches per rollout batch) or TRL's RLOOTrainer (LoRA r8, one
    update per batch, 2 generations a prompt), 8 samples a step, the same generation length, fp32, a rule
    reward; seconds = the training loop."""
    import torch

    from llm_magics.models import load_model, resolve

    def reward(prompts, completions, **_):
        return [float(" good" in c or " great" in c) for c in completions]
    loaded = load_model(resolve("smollm2"), "causal_lm", torch.device("cpu"), torch.float32, fresh=True)
    torch.manual_seed(0)
    if variant == "ppo-ours":
        from peft import LoraConfig, get_peft_model

        from llm_magics.preference.ppo import PolicyWithValue, PpoConfig, PpoTrainer
        for param in loaded.model.parameters():
            param.requires_grad = False
        model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"))
        policy = PolicyWithValue(model, loaded.tokenizer)
        trainer = PpoTrainer(policy, reward, "rule", PPO_PROMPTS * 2,
                             PpoConfig(steps=args.ppo_steps, batch_size=8, minibatch_size=4, lr=1e-4,
                                       max_new_tokens=args.new_tokens))
        _, seconds = timed(trainer.train)
        return {"seconds": seconds, "samples": 8 * args.ppo_steps, "peak_rss": peak_rss(),
                "tokens": trainer.tokens, "settings": "ours, 4 PPO epochs × 2 minibatches, KV-cache rollouts"}
    import datasets
    from peft import LoraConfig
    from trl import RLOOConfig, RLOOTrainer
    tok = loaded.tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        config = RLOOConfig(output_dir=tmp, per_device_train_batch_size=8, num_generations=2, max_steps=args.ppo_steps,
                            max_completion_length=args.new_tokens, learning_rate=1e-4, bf16=False, report_to=[],
                            save_strategy="no", disable_tqdm=True, use_cpu=True, logging_steps=50)
        trainer = RLOOTrainer(model=loaded.model, reward_funcs=reward, args=config,
                              train_dataset=datasets.Dataset.from_dict({"prompt": PPO_PROMPTS * 8}),
                              processing_class=tok,
                              peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        _, seconds = timed(trainer.train)
    return {"seconds": seconds, "samples": 8 * args.ppo_steps, "peak_rss": peak_rss(),
            "settings": f"TRL RLOO defaults but fp32 (checkpointing {config.gradient_checkpointing})"}


def bench_rollout(args) -> None:
    import numpy as np
    import torch

    from llm_magics.models import load_model, resolve
    from llm_magics.preference.ppo import PolicyWithValue, response_mask
    loaded = load_model(resolve("smollm2"), "causal_lm", torch.device("cpu"), torch.float32)
    prompts = PPO_PROMPTS * 2
    policy = PolicyWithValue(loaded.model, loaded.tokenizer)
    tok = loaded.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)

    def plain():   # what a user writes: the same sampling settings, so a seed gives both the same tokens
        with torch.no_grad():
            return loaded.model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                         max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id)
    policy.rollout(prompts, 4)   # warm up both
    plain()
    # Interleaved rounds, each side seeded alike; tokens counted alike (real tokens up to the first EOS),
    # and the median round kept, so neither side gains from the other's warm caches or a load spike.
    ours, theirs = [], []
    for round_ in range(args.rounds):
        torch.manual_seed(round_)
        roll, seconds = timed(lambda: policy.rollout(prompts, args.new_tokens))
        ours.append(int(roll.mask.sum()) / seconds)
        torch.manual_seed(round_)
        out, seconds = timed(plain)
        mask, _ = response_mask(out[:, enc["input_ids"].shape[1]:], tok.eos_token_id)
        theirs.append(int(mask.sum()) / seconds)
    ours_rate, plain_rate = float(np.median(ours)), float(np.median(theirs))
    print(f"ppo rollout ({args.rounds} interleaved rounds, median): ours {ours_rate:.1f} new tokens/s, plain generate "
          f"{plain_rate:.1f} (ratio {ours_rate / plain_rate:.2f}×, goal ≥ 1.0×)")


def bench_ppo(args) -> None:
    bench_rollout(args)
    got = {variant: child(variant, args) for variant in PPO_VARIANTS}
    print(f"PPO vs RLOO on smollm2 + LoRA r8, {args.ppo_steps} steps × 8 samples of {args.new_tokens} new tokens, fp32")
    for variant, r in got.items():
        print(f"{variant:10s} {r['samples'] / r['seconds']:6.2f} samples/s  {r['seconds']:7.1f} s  peak RSS "
              f"{r['peak_rss'] / 2**30:.2f} GiB  ({r['settings']})")
    print(f"ppo: samples/s ours/TRL RLOO {got['rloo-trl']['seconds'] / got['ppo-ours']['seconds']:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("reward", "dpo", "ppo", "rollout", "all"), default="all")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--reward-lr", type=float, default=5e-5)
    parser.add_argument("--reward-epochs", type=int, default=1)
    parser.add_argument("--reward-batch", type=int, default=8)
    parser.add_argument("--reward-trl-defaults-only", action="store_true",
                        help="reward: skip TRL without gradient checkpointing")
    parser.add_argument("--dpo-pairs", type=int, default=96)
    parser.add_argument("--dpo-steps", type=int, default=12)
    parser.add_argument("--dpo-dtype", choices=("bfloat16", "float32"), default="bfloat16",
                        help="the dtype of both sides (bf16 autocast is TRL's default)")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5, help="PPO rollout: interleaved timing rounds")
    parser.add_argument("--ppo-steps", type=int, default=4)
    parser.add_argument("--child", choices=DPO_VARIANTS + PPO_VARIANTS, help=argparse.SUPPRESS)
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_PROGRESS", "none")
    if args.child:
        import json
        import warnings
        warnings.simplefilter("ignore")
        measure = dpo_child if args.child in DPO_VARIANTS else ppo_child
        print("RESULT " + json.dumps(measure(args.child, args)))
        return
    started = time.perf_counter()
    for part, fn in (("reward", bench_reward), ("dpo", bench_dpo), ("ppo", bench_ppo), ("rollout", bench_rollout)):
        if args.part == part or (args.part == "all" and part != "rollout"):
            fn(args)
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
