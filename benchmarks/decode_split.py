"""Where a decoded token's time goes: SmolLM2's `generate` (greedy, batch 1, KV cache) per token, against
its linear layers alone multiplying one token each (the weight reads a token cannot avoid), fp32 and bf16.

    python benchmarks/decode_split.py [--threads N] [--tokens 48]

Prints ms/token, the linear layers' ms and GB/s, and the share of a token's time they take; the rest is
`generate`'s per-token work (attention, norms, sampling, Python). benchmarks/results/utilisation-vm-amd-epyc.md
reads it against the machine's STREAM bandwidth.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_magics.models import resolve
    path = resolve("smollm2").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer("Review: a warm, funny film about", return_tensors="pt")
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        settings = dict(do_sample=False, pad_token_id=tokenizer.eos_token_id)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=4, **settings)                     # warm-up
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **settings)
            per_token = (time.perf_counter() - start) / args.tokens
            weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
            one = {w.shape[1]: torch.randn(1, w.shape[1], dtype=dtype) for w in weights}
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                for w in weights:
                    torch.nn.functional.linear(one[w.shape[1]], w)
                best = min(best, time.perf_counter() - start)
        size = sum(w.numel() * w.element_size() for w in weights)
        print(f"{str(dtype).removeprefix('torch.'):9} generate {per_token * 1e3:5.1f} ms/token ({1 / per_token:5.1f} "
              f"tokens/s); linear layers alone {best * 1e3:5.1f} ms ({size / best / 1e9:4.1f} GB/s over "
              f"{size / 1e6:.0f} MB): {100 * best / per_token:.0f} % of a token's time")


if __name__ == "__main__":
    main()
