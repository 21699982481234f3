"""`%index eval` and a paired comparison of retrieval modes, on this repository's own docs.

The documents are docs/*.md; the queries are their section headings (## and ###, those that occur once),
each to be found in its own file. One index (MiniLM, flat, BM25 beside it), evaluated at k = 5 with dense,
lexical (BM25) and hybrid search; then hybrid and BM25 are each compared with dense, paired per query:

    python benchmarks/index_eval_docs.py          # about a minute on 2 cores (the build is most of it)

Runs in a throwaway LLM_MAGICS_HOME, so nothing is added to your run store.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def heading_queries(folder: Path):
    import pandas as pd
    rows = [{"question": line.lstrip("#").strip().strip("`"), "doc": str(path)}
            for path in sorted(folder.glob("*.md")) for line in path.read_text().splitlines()
            if re.match(r"^#{2,3} ", line)]
    return pd.DataFrame(rows).drop_duplicates("question", keep=False).reset_index(drop=True)


def main() -> None:
    os.environ.setdefault("LLM_MAGICS_HOME", tempfile.mkdtemp(prefix="index-eval-"))
    sys.path.insert(0, str(REPO))
    from llm_magics import api
    docs = REPO / "docs"
    queries = heading_queries(docs)
    began = time.perf_counter()
    api.index.build(name="docs", source=str(docs), replace=True)
    print(f"{len(list(docs.glob('*.md')))} files, {len(queries)} headings as queries; "
          f"built in {time.perf_counter() - began:.0f}s")
    runs = {mode: api.index.eval(name="docs", query=queries, text="question", relevant="doc", k=5, mode=mode)
            for mode in ("dense", "lexical", "hybrid")}
    for mode, result in runs.items():
        print(f"{mode:8s} hit@5 {result.metrics['hit_at_k']:.3f}  MRR@5 {result.metrics['mrr_at_k']:.3f}")
    print(api.compare_paired(runs["hybrid"], runs["dense"], names=("hybrid", "dense")).sentence)
    print(api.compare_paired(runs["lexical"], runs["dense"], names=("bm25", "dense")).sentence)
    print(api.compare_paired(runs["lexical"], runs["dense"], metric="score", names=("bm25", "dense")).sentence)


if __name__ == "__main__":
    main()
