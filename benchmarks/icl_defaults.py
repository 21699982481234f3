"""Which `%%icl` settings work: accuracy of each configuration beside a plain label-scoring loop.

Held-out SST-2 sentences (the first N rows of test.tsv), SmolLM2-135M-Instruct, 8 demonstrations
drawn balanced from full-sentence reviews of dev.tsv (≥ 10 words), the template

    Review: {sentence}
    Sentiment: {label}

and the verbalizers negative / positive. Every configuration runs with the same seeds (the seed
picks the demonstrations), so the lines differ only in how the prompt is scored:

- plain loop: what a user writes in 40 lines with transformers alone — `groupby(label).sample(4)`
  demonstrations, their KV cache computed once, ' negative' vs ' positive' next-token
  log-probability after each query;
- %%icl with its defaults (calibrated label scores; each run also reports the uncalibrated
  accuracy of the same scores, and the zero-shot accuracy beside), and with --chat.

    python benchmarks/icl_defaults.py [--rows 200] [--seeds 0] [--threads N] [--out FILE]

One process, one run; the figures go to stdout and, with --out, to a JSON file.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import add_threads_option, set_threads, timed

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data" / "sst2"
TEMPLATE = "Review: {sentence}\nSentiment: {label}"
LABELS = ["negative", "positive"]

# name → %%icl options beyond the common ones (model, data, demos, shots, labels, template, seed)
CONFIGS = {
    "%%icl defaults": {},
    "%%icl --chat": {"chat": True},
}


def plain_loop(loaded, demos: pd.DataFrame, test: pd.DataFrame, seed: int) -> float:
    """The baseline a user writes with transformers alone: sampled demonstrations, their KV cache
    computed once, then each query's next-token log-probabilities of ' negative' and ' positive'."""
    import copy
    model, tokenizer = loaded.model, loaded.tokenizer
    shots = demos.groupby("label").sample(4, random_state=seed).sample(frac=1, random_state=seed)
    prefix = "".join(f"Review: {s}\nSentiment: {LABELS[y]}\n\n" for s, y in zip(shots.sentence, shots.label))
    words = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in LABELS]
    right = 0
    with torch.inference_mode():
        prefix_ids = tokenizer(prefix, return_tensors="pt")["input_ids"].to(loaded.device)
        cache = model(prefix_ids, use_cache=True).past_key_values
        for sentence, label in zip(test.sentence, test.label):
            ids = tokenizer(f"Review: {sentence}\nSentiment:", add_special_tokens=False,
                            return_tensors="pt")["input_ids"].to(loaded.device)
            logits = model(ids, past_key_values=copy.deepcopy(cache), use_cache=True).logits[0, -1]
            right += int(int(logits[words].argmax()) == int(label))
    return right / len(test)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200, help="the first N sentences of SST-2 test.tsv")
    parser.add_argument("--seeds", default="0", help="demonstration seeds; each configuration runs on each")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--only", default=None, help="comma-separated names to run, of 'plain loop' and the "
                                                     "configurations (default: all)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if not (SST2 / "test.tsv").exists():
        print(f"SST-2 not found under {SST2} (set LLM_MAGICS_SHARED)")
        return 1
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="llm-magics-bench-"))
    os.environ["LLM_MAGICS_PROGRESS"] = "none"
    from llm_magics import api
    from llm_magics.engine.device import pick_device, pick_dtype
    from llm_magics.models import load_model, resolve

    read = lambda name: pd.read_csv(SST2 / name, sep="\t", quoting=csv.QUOTE_NONE)  # noqa: E731
    test = read("test.tsv").head(args.rows)
    dev = read("dev.tsv")
    demos = dev[dev["sentence"].str.split().str.len() >= 10].reset_index(drop=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    configs = {name: extra for name, extra in CONFIGS.items() if args.only is None or name in args.only.split(",")}
    device = pick_device()
    loaded = load_model(resolve(args.model), "causal_lm", device, pick_dtype(device))
    print(f"SST-2 · first {len(test)} test sentences ({int(test.label.sum())} positive) · {args.model} · {device} "
          f"· 8 balanced shots from {len(demos)} dev reviews of ≥ 10 words · seeds {seeds} · "
          f"torch threads {torch.get_num_threads()}", flush=True)
    figures: dict[str, dict] = {}
    if args.only is None or "plain loop" in args.only.split(","):
        plain, seconds = timed(lambda: [plain_loop(loaded, demos, test, s) for s in seeds])
        figures["plain loop"] = {"accuracy": plain, "seconds": seconds}
        print(f"  {'plain loop (40 lines)':<32} {fmt(plain)}   {seconds:6.1f} s", flush=True)
    common = dict(model=args.model, data=test, demos=demos, shots=8, labels=LABELS, template=TEMPLATE)
    for name, extra in configs.items():
        results, seconds = timed(lambda: [api.icl(**common, **extra, seed=s) for s in seeds])
        got = {key: [r.metrics.get(key, float("nan")) for r in results]
               for key in ("test_accuracy", "test_uncalibrated_accuracy", "zero_shot_accuracy")}
        figures[name] = {**got, "seconds": seconds, "options": extra,
                         "demonstrations": [r.tables["demonstrations"]["demos_row"].tolist() for r in results]}
        print(f"  {name:<32} {fmt(got['test_accuracy'])}   {seconds:6.1f} s   "
              f"uncalibrated {fmt(got['test_uncalibrated_accuracy'])}   0-shot {fmt(got['zero_shot_accuracy'])}",
              flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": len(test), "seeds": seeds, "model": args.model,
                                              "figures": figures}, indent=1))
    return 0


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} (" + " ".join(f"{v:.3f}" for v in values) + ")"


if __name__ == "__main__":
    sys.exit(main())
