"""In-context classification speed: label scoring with a cached prefix against a generate loop.

The baseline is the usual notebook loop: for each query, the whole prompt
(the same 8 demonstrations + the query) goes through `model.generate`
(greedy, 3 new tokens) and the answer is parsed for a label. Ours: the
demonstrations' KV cache computed once, then batched forward passes that read
each label's log-likelihood from the last position (no generation). A third
line shows the same batched scoring without the prefix cache, to separate the
two effects.

    python benchmarks/icl_scoring.py [--queries 96] [--model smollm2] [--threads N]

Same model, dtype, demonstrations and SST-2 test sentences, one process, one
run. Goal: ≥ 3× the generate loop's queries/s.
"""
from __future__ import annotations

import argparse
import csv
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


def generate_loop(loaded, prompts: list[str]) -> list[str]:
    """The baseline: one generate call per query, the answer parsed for a label."""
    model, tokenizer = loaded.model, loaded.tokenizer
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").to(loaded.device)
            new = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(new[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().lower()
            out.append(next((w for w in LABELS if text.startswith(w[:3])), "?"))
    return out


def uncached_scoring(backend, requests, continuations):
    """Our batched scoring with every prompt whole: no shared prefix."""
    return backend.score([("", p + q) for p, q in requests], continuations)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=96, help="SST-2 test sentences (the generate loop is slow)")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--shots", type=int, default=8)
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    if not (SST2 / "test.tsv").exists():
        print(f"SST-2 not found under {SST2} (set LLM_MAGICS_SHARED)")
        return 1
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="llm-magics-bench-"))
    os.environ["LLM_MAGICS_PROGRESS"] = "none"
    from llm_magics import api
    from llm_magics.backends import LocalBackend
    from llm_magics.engine.device import pick_device, pick_dtype
    from llm_magics.models import load_model

    read = lambda name: pd.read_csv(SST2 / name, sep="\t", quoting=csv.QUOTE_NONE)  # noqa: E731
    train, test = read("train.tsv"), read("test.tsv").head(args.queries)
    demos = train[train["sentence"].str.split().str.len() >= 10]
    device = pick_device()
    loaded = load_model(args.model, "causal_lm", device, pick_dtype(device))
    common = dict(model=args.model, data=test, demos=demos, shots=args.shots, labels=LABELS, template=TEMPLATE,
                  zero_shot=False)
    api.icl(**{**common, "data": test.head(4)})                      # warm-up: kernels, caches
    result, ours_s = timed(lambda: api.icl(**common))
    prefix = result.prompt[:result.prompt.rindex("Review: ")]
    queries = [f"Review: {s}\nSentiment:" for s in test["sentence"]]
    backend = LocalBackend(loaded)
    _, uncached_s = timed(lambda: uncached_scoring(backend, [(prefix, q) for q in queries],
                                                    [" " + w for w in LABELS]))
    generate_loop(loaded, [prefix + queries[0]])                    # warm-up
    answers, generate_s = timed(lambda: generate_loop(loaded, [prefix + q for q in queries]))
    agree = float(np.mean(np.array(answers) == result.predictions["prediction"].to_numpy()))
    n = len(queries)
    prompt_tokens = len(loaded.tokenizer(prefix)["input_ids"])
    print(f"in-context scoring · {args.model} · {device} {result.dtype} · {n} SST-2 queries · {args.shots} shots "
          f"(prefix {prompt_tokens} tokens) · torch threads {torch.get_num_threads()}")
    rows = [("generate loop (baseline)", generate_s), ("batched scoring, no prefix cache", uncached_s),
            ("llm-magics: batched scoring + cached prefix", ours_s)]
    for name, seconds in rows:
        print(f"  {name:<46} {n / seconds:8.1f} queries/s   {seconds:7.2f} s   ×{generate_s / seconds:5.1f}")
    print(f"  llm-magics tokens/s {result.tokens_per_s:,.0f} · accuracy {result.metrics['test_accuracy']:.3f} · "
          f"generate-loop answers agreeing with the scored label {agree:.0%}")
    ratio = generate_s / ours_s
    print(f"ratio vs generate loop: {ratio:.1f}× (goal ≥ 3×) {'OK' if ratio >= 3 else 'BELOW GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
