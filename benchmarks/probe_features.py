"""Feature extraction speed: llm-magics against the usual notebook glue.

The baseline is the seed's way: tokenize the whole dataset padded to its
longest text, then `dataset.map(fn, batched=True, batch_size=10)` calling the
model per batch. Ours: length-sorted batches under a token budget, dynamic
padding, inference mode, the default dtype (bf16 where the CPU does it
natively), and the on-disk feature cache for the re-run.

    python benchmarks/probe_features.py [--rows 5000] [--model minilm]

Same model, same 5,000 SST-2 train rows, one process, one run. Goals (CPU):
fresh extraction ≥ 5× the baseline's rows/s, cached re-run ≥ 50×.
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

from common import timed

ROOT = Path(__file__).resolve().parents[1]
SST2 = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data" / "sst2" / "train.tsv"


def baseline(model, tokenizer, texts: list[str]) -> np.ndarray:
    import datasets
    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"text": texts})
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=256)
    ds = ds.add_column("input_ids", encoded["input_ids"]).add_column("attention_mask", encoded["attention_mask"])
    ds.set_format("torch", columns=["input_ids", "attention_mask"])

    def embed(batch):
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return {"embedding": ((out.last_hidden_state * mask).sum(1) / mask.sum(1)).numpy()}

    ds = ds.map(embed, batched=True, batch_size=10)
    return np.asarray(ds["embedding"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="llm-magics-bench-"))

    from llm_magics.engine.device import dtype_name, pick_dtype
    from llm_magics.engine.features import FeatureCache, cached_features, num_layers
    from llm_magics.models import load_model

    texts = pd.read_csv(SST2, sep="\t", quoting=csv.QUOTE_NONE)["sentence"].sample(
        args.rows, random_state=0).astype(str).tolist()
    device = torch.device("cpu")
    fp32 = load_model(args.model, "base", device, torch.float32)
    ours = load_model(args.model, "base", device, pick_dtype(device))
    top = num_layers(ours.model.config)
    print(f"{args.rows} SST-2 rows · {args.model} · {torch.get_num_threads()} threads · ours in {dtype_name(ours.dtype)}")

    reference, t_base = timed(lambda: baseline(fp32.model, fp32.tokenizer, texts))
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(Path(tmp))
        (feats, _), t_ours = timed(lambda: cached_features(ours, texts, [top], "mean", cache))
        (again, stats), t_cached = timed(lambda: cached_features(ours, texts, [top], "mean", cache))
        assert stats.extracted_layers == 0
        (exact, _), t_fp32 = timed(lambda: cached_features(fp32, texts, [top], "mean", None))

    def cosine(a, b):
        return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))

    rows = [("baseline: padded dataset.map, batch 10, fp32", t_base, None),
            ("llm-magics fp32 (length-sorted, token budget)", t_fp32, cosine(exact[top], reference)),
            (f"llm-magics default ({dtype_name(ours.dtype)})", t_ours, cosine(feats[top], reference)),
            ("llm-magics cached re-run", t_cached, cosine(again[top], reference))]
    print(f"{'':48} {'seconds':>8} {'rows/s':>9} {'× baseline':>11} {'min cosine':>11}")
    for name, seconds, cos in rows:
        print(f"{name:48} {seconds:8.2f} {args.rows / seconds:9.0f} {t_base / seconds:11.1f} "
              f"{'' if cos is None else f'{cos:.5f}':>11}")
    fresh_ok, cached_ok = t_base / t_ours >= 5, t_base / t_cached >= 50
    print(f"goal fresh ≥ 5×: {'met' if fresh_ok else 'MISSED'} · goal cached ≥ 50×: {'met' if cached_ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
