"""Index build speed and query latency.

Build: `%index build` (token-aware chunking, length-sorted encoder batches in
the default dtype, FAISS, BM25, parquet, an atomic folder on disk) against
the usual two lines — sentence-transformers `encode(normalize_embeddings=True)`
then `faiss.IndexFlatIP.add` in memory — on the same texts and the same
MiniLM, model loading excluded for both. Two corpora: SQuAD's 646 paragraphs
(long) and 2,000 SST-2 sentences (short).

Query: p50/p99 latency of one query at 100,000 chunks (synthetic unit
vectors, 384 dims) on the exact index (float32; float16 storage; the default, a float16 scan whose best 4·k
are rescored in float32), and on HNSW; FAISS alone and through `Index.search` (ids → chunk rows → DataFrame),
with each form's recall@10 against float32's exact ids on the same queries. Encoding one query with MiniLM
is timed apart.

    python benchmarks/index_build_query.py [--chunks 100000] [--threads N]

Goals: build rows/s ≥ 1.0× the baseline; exact p50 ≤ 5 ms at 100k chunks.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import add_threads_option, set_threads

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LLM_MAGICS_SHARED", ROOT.parent / "shared")) / "data"


def corpora() -> dict[str, list[str]]:
    out = {}
    squad = SHARED / "squad2" / "dev-v2.0.json"
    if squad.exists():
        data = json.loads(squad.read_text())
        out["SQuAD paragraphs"] = [p["context"] for a in data["data"] for p in a["paragraphs"]]
    sst2 = SHARED / "sst2" / "train.tsv"
    if sst2.exists():
        frame = pd.read_csv(sst2, sep="\t", quoting=csv.QUOTE_NONE)
        out["SST-2 sentences"] = frame["sentence"].sample(2000, random_state=0).tolist()
    return out


def baseline_build(model, texts: list[str]):
    import faiss
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return f"p50 {np.percentile(ms, 50):6.2f} ms   p99 {np.percentile(ms, 99):6.2f} ms"


def latency(n: int, dim: int, kind: str, precision: str = "float32",
            queries: int = 300) -> tuple[str, str, np.ndarray]:
    """FAISS alone and through Index.search (p50/p99), and the ids each query found."""
    from llm_magics.retrieval.store import Index, Manifest
    from llm_magics.retrieval import vectors as vec
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    chunks = pd.DataFrame({"text": [f"chunk {i}" for i in range(n)], "source": [f"doc{i // 4}" for i in range(n)],
                           "position": np.arange(n) % 4, "start": 0, "end": 0})
    manifest = Manifest(name=f"bench-{kind}", model="synthetic", model_fingerprint="", dim=dim, pooling="mean",
                        chunk=0, overlap=0, params=vec.Params(kind=kind, precision=precision).to_dict(), lexical=False)
    index = Index.create(manifest, dim, data)
    index.upsert(chunks, data)
    probes = rng.standard_normal((queries, dim), dtype=np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    raw, full, found = [], [], []
    for q in probes:
        start = time.perf_counter()
        _, ids = vec.search(index.dense, q[None], 10)
        raw.append(time.perf_counter() - start)
        found.append(ids[0])
        start = time.perf_counter()
        index.search(["q"], 10, mode="dense", query_vectors=q[None])
        full.append(time.perf_counter() - start)
    return percentiles(raw), percentiles(full), np.array(found)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--model", default="minilm")
    add_threads_option(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="llm-magics-bench-"))
    os.environ["LLM_MAGICS_PROGRESS"] = "none"
    import torch
    from llm_magics import api
    from llm_magics.engine.device import pick_device, pick_dtype
    from llm_magics.models import resolve
    from llm_magics.retrieval import load_embedder

    device = pick_device()
    embedder = load_embedder(args.model, device, pick_dtype(device))         # loaded once, excluded from timings
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(resolve(args.model).path, device=str(device))
    print(f"index build · {args.model} · {device} · ours in {embedder.dtype}, sentence-transformers in "
          f"{next(st.parameters()).dtype} · torch threads {torch.get_num_threads()}")
    texts_by_corpus = corpora()
    if not texts_by_corpus:
        print(f"no corpora under {SHARED} (set LLM_MAGICS_SHARED)")
    for name, texts in texts_by_corpus.items():
        baseline_build(st, texts[:64])                                          # warm-up
        api.index.build(name="warmup", source=texts[:64], cache=False, replace=True)
        start = time.perf_counter()
        baseline_build(st, texts)
        base_s = time.perf_counter() - start
        ours = api.index.build(name="bench", source=texts, cache=False, replace=True)
        ours_s = ours.metrics["build_s"]
        print(f"  {name} ({len(texts):,} texts → {ours.metrics['chunks']:,} chunks)")
        print(f"    sentence-transformers encode + IndexFlatIP  {len(texts) / base_s:8.1f} rows/s  {base_s:7.2f} s")
        print(f"    llm-magics %index build (+BM25, on disk)    {len(texts) / ours_s:8.1f} rows/s  {ours_s:7.2f} s"
              f"   ×{base_s / ours_s:.2f} (goal ≥ 1.0)")
    print(f"query latency · {args.chunks:,} chunks × 384 dims (synthetic unit vectors) · k=10 · one query at a time")
    exact = None   # recall@10 against float32's exact ids, on the same queries
    for kind, precision, label in (("flat", "float32", "exact, float32"), ("flat", "float16", "exact, float16"),
                                   ("flat", "auto", "exact, the default"), ("hnsw", "float32", "hnsw (M=32, ef=64)")):
        raw, full, ids = latency(args.chunks, 384, kind, precision)
        exact = ids if exact is None else exact
        recall = np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(ids, exact)])
        print(f"  {label:<20} FAISS search {raw}   Index.search → DataFrame {full}   recall@10 {recall:.4f}")
    print("  (the default: float16 codes scanned, the best 4·k rescored in float32, retrieval/vectors.py)")
    samples = []
    for _ in range(50):
        start = time.perf_counter()
        embedder.encode(["when did the Normans conquer England"])
        samples.append(time.perf_counter() - start)
    print(f"  encoding one query with {args.model}: {percentiles(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
