"""Scoring an index on queries with known answers: per query, hit@k (0/1) and the rank of the first relevant chunk.

A query's answer is the document source it should find (`source` as `%index query` shows it), or a
list of them. The per-query frame has the columns of `runs.predictions` — `item_id` (a hash of the
query text), `text`, `label` (the relevant sources), `prediction` (the top chunk's source), `score`
(the reciprocal rank, 0 when missed) and `correct` (the hit) — plus `rank`, so two `%index eval`
runs on the same queries pair up in `%llm compare A B --paired` like two classifiers do.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..runs.stats import item_id


def relevant_sets(values) -> list[frozenset[str]]:
    """Each query's relevant sources: a single source, or a list / tuple / set / array of them."""
    def as_set(value) -> frozenset[str]:
        if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
            return frozenset(str(v) for v in value)
        return frozenset() if pd.isna(value) else frozenset([str(value)])
    return [as_set(v) for v in values]


def per_query(queries: list[str], relevant: list[frozenset[str]], hits: pd.DataFrame) -> pd.DataFrame:
    """One row per query from `Index.search`'s frame (query_id, rank, source): hit@k and the first relevant rank."""
    first_rank = np.full(len(queries), np.nan)
    top_source = np.full(len(queries), None, dtype=object)
    for query_id, rows in hits.groupby("query_id", sort=False):
        top_source[query_id] = rows["source"].iloc[0]
        found = rows["rank"][rows["source"].astype(str).isin(relevant[query_id])]
        if len(found):
            first_rank[query_id] = found.min()
    hit = (~np.isnan(first_rank)).astype(float)
    return pd.DataFrame({
        "item_id": [item_id(q) for q in queries], "text": queries,
        "label": [" | ".join(sorted(r)) for r in relevant], "prediction": top_source,
        "score": np.where(hit > 0, 1.0 / np.where(hit > 0, first_rank, 1.0), 0.0),
        "correct": hit, "rank": first_rank,
    })


def metrics(frame: pd.DataFrame, k: int) -> dict:
    """hit@k (the share of queries with a relevant chunk in the top k) and MRR@k (mean reciprocal rank)."""
    return {"hit_at_k": round(float(frame["correct"].mean()), 4), "mrr_at_k": round(float(frame["score"].mean()), 4),
            "k": k, "queries": len(frame)}
