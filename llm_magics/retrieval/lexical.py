"""BM25 over the chunks (bm25s: sparse matrices, saved as .npy + JSON, no pickle).

Dense vectors miss rare names and numbers that a question shares with its
passage word for word; BM25 catches exactly those. On SQuAD paragraphs BM25
alone beats MiniLM, and the two fused beat both (see `hybrid.py`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

STOPWORDS = "en"


def _tokenize(texts: Sequence[str], return_ids: bool):
    import bm25s
    return bm25s.tokenize(list(texts), stopwords=STOPWORDS, show_progress=False, return_ids=return_ids)


class Lexical:
    """BM25 whose document i is chunk row i of the index."""

    def __init__(self, retriever, size: int):
        self.retriever = retriever
        self.size = size

    @classmethod
    def build(cls, texts: Sequence[str]) -> "Lexical":
        import bm25s
        retriever = bm25s.BM25()
        retriever.index(_tokenize(texts, True), show_progress=False)
        return cls(retriever, len(texts))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, size: int) -> "Lexical":
        """BM25 saved by `save`, for `size` chunks; ValueError when its arrays do not hold together."""
        import bm25s
        retriever = bm25s.BM25.load(str(folder), allow_pickle=False, show_progress=False)
        check_scores(retriever.scores, size)
        return cls(retriever, size)

    def search(self, queries: Sequence[str], n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (row positions, scores) of at most n rows that share a word with it."""
        n = min(n, self.size)
        if n <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in queries]
        docs, scores = self.retriever.retrieve(_tokenize(queries, False), k=n, show_progress=False)
        out = []
        for row_docs, row_scores in zip(docs, scores):
            hit = row_scores > 0
            out.append((np.asarray(row_docs[hit], dtype=np.int64), np.asarray(row_scores[hit], dtype=np.float32)))
        return out


def check_scores(scores: dict, size: int) -> None:
    """BM25's sparse matrix (CSC: data, indices, indptr) must describe `size` documents."""
    if scores.get("num_docs") != size:
        raise ValueError(f"it holds {scores.get('num_docs')} documents where the chunk table has {size}")
    data, indices, indptr = (np.asarray(scores[k]) for k in ("data", "indices", "indptr"))
    if data.ndim != 1 or indices.ndim != 1 or indptr.ndim != 1 or len(indptr) == 0 \
            or not np.issubdtype(indices.dtype, np.integer) or not np.issubdtype(indptr.dtype, np.integer):
        raise ValueError("its arrays do not have the shapes BM25 writes")
    if len(indices) != len(data) or indptr[0] != 0 or indptr[-1] != len(data) or np.any(np.diff(indptr) < 0):
        raise ValueError("its arrays do not agree with each other")
    if len(indices) and (indices.min() < 0 or indices.max() >= size):
        raise ValueError("it names documents the chunk table does not have")
    if not np.isfinite(data).all():
        raise ValueError("it holds scores that are not numbers")
