"""FAISS indexes over unit vectors (inner product = cosine), with int64 ids we choose.

- flat: exact search (IndexFlatIP behind an IndexIDMap2).
- hnsw: graph search; `ef_search` trades speed for recall. FAISS cannot remove
  from an HNSW graph, so a delete rebuilds it from the stored vectors.
- ivf:  inverted lists trained with k-means; `nprobe` lists are visited per query.
- auto: flat below AUTO_HNSW vectors, hnsw below AUTO_IVF, ivf above.

`precision="float16"` stores each vector in half the bytes (FAISS's scalar
quantizer): a flat scan reads half the memory, so one query at 100k chunks
takes about half the time; scores move by ~1e-3, and neighbours whose scores
differ by less than that can swap (recall@10 0.9993 on the benchmark's queries).

`precision="auto"` (the default): a flat index scans float16 codes and rescores
its best k·RESCORE candidates against float32 copies (FAISS's IndexRefineFlat),
so ids and scores are float32's at about the float16 scan's speed, for 1.5x the
memory of float32 (measured: recall@k 1.0 at k 1..50, 100k vectors, 300 queries).
Other kinds store float32. Folders written before "auto" name their precision
and load as they were.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from ..errors import UsageError

KINDS = ("flat", "hnsw", "ivf", "auto")
AUTO_HNSW = 50_000        # exact search stays under a few ms up to here
AUTO_IVF = 2_000_000      # past this, a graph's memory and build time favour inverted lists
# One query scans the whole flat index on one thread either way; FAISS's
# OpenMP team only costs time there (measured: 7.7 ms on 1 thread against
# 48 ms on 2 busy cores, 100k × 384).
SMALL_BATCH = 20
PRECISIONS = ("auto", "float32", "float16")
# float16 moves a unit vector's score by at most ~5e-4: the true top k lie among the float16 scan's best
# 4k unless hundreds of vectors tie within that (measured: 2k already gave float32's results).
RESCORE = 4.0


@dataclass
class Params:
    kind: str = "flat"
    nlist: int | None = None          # ivf: inverted lists (default 4·√n, at most n/39)
    nprobe: int | None = None         # ivf: lists visited per query (default max(4, nlist/8))
    hnsw_m: int = 32                  # hnsw: neighbours per node
    ef_construction: int = 80
    ef_search: int = 64
    precision: str = "auto"           # see the module's docstring: float32, float16, or (flat) both

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Params":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def resolve_kind(kind: str, n: int) -> str:
    if kind != "auto":
        return kind
    return "flat" if n < AUTO_HNSW else "hnsw" if n < AUTO_IVF else "ivf"


def default_nlist(n: int) -> int:
    # FAISS wants ≥ 39 training points per list; √n lists keep lists and probes balanced.
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def settle(params: Params, n: int) -> None:
    """Fill IVF's defaults for n vectors; UsageError when n is too few to train on.

    Called before encoding too, so a corpus too small for its --nlist fails
    before minutes of encoder time and before anything is written."""
    if params.kind != "ivf":
        return
    params.nlist = params.nlist or default_nlist(n)
    params.nprobe = params.nprobe or max(4, params.nlist // 8)
    if n < params.nlist:
        raise UsageError(f"--kind ivf needs at least --nlist ({params.nlist}) vectors to train, got {n}; "
                         "use --kind flat or hnsw for small corpora")


def precision_notes(params: Params) -> list[str]:
    """What a build's Result says about how its vectors are stored, when the default chose for it."""
    if params.kind == "flat" and params.precision == "auto":
        return [f"exact search: a float16 scan, its best {RESCORE:g}·k candidates rescored in float32 (float32's "
                "results, about twice as fast, 1.5x its memory); --precision float32 or float16 for one alone"]
    return []


def new_index(params: Params, dim: int, training: np.ndarray | None = None):
    """An empty index of `params.kind` (IVF trained on `training`)."""
    metric = faiss.METRIC_INNER_PRODUCT
    half = params.precision == "float16"
    fp16 = faiss.ScalarQuantizer.QT_fp16
    if params.kind == "flat":
        if params.precision == "auto":
            rescored = faiss.IndexRefineFlat(faiss.IndexScalarQuantizer(dim, fp16, metric))
            rescored.k_factor = RESCORE
            return faiss.IndexIDMap2(rescored)
        return faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dim, fp16, metric) if half else faiss.IndexFlatIP(dim))
    if params.kind == "hnsw":
        inner = faiss.IndexHNSWSQ(dim, fp16, params.hnsw_m, metric) if half else \
            faiss.IndexHNSWFlat(dim, params.hnsw_m, metric)
        inner.hnsw.efConstruction = params.ef_construction
        inner.hnsw.efSearch = params.ef_search
        return faiss.IndexIDMap2(inner)
    if params.kind == "ivf":
        settle(params, 0 if training is None else len(training))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, params.nlist, fp16, metric) if half else \
            faiss.IndexIVFFlat(quantizer, dim, params.nlist, metric)
        index.train(np.ascontiguousarray(training, dtype=np.float32))
        index.nprobe = params.nprobe
        return index
    raise ValueError(f"unknown index kind {params.kind!r}")


def apply_search_params(index, params: Params, nprobe: int | None = None, ef_search: int | None = None) -> None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = ef_search or params.ef_search
    if isinstance(inner, faiss.IndexIVF):
        inner.nprobe = nprobe or params.nprobe or 1


def add(index, vectors: np.ndarray, ids: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))


def stored(index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a flat or HNSW index, read back from FAISS's own storage."""
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    inner = faiss.downcast_index(index.index)
    vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.zeros((0, index.d), np.float32)
    return ids, vectors


def remove(index, params: Params, ids: np.ndarray):
    """The index without `ids` (HNSW and the rescored flat index are rebuilt: FAISS cannot delete from them)."""
    if not len(ids):
        return index
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, (faiss.IndexHNSW, faiss.IndexRefine)):
        kept_ids, vectors = stored(index)
        keep = ~np.isin(kept_ids, ids)
        fresh = new_index(params, index.d)
        add(fresh, vectors[keep], kept_ids[keep])
        return fresh
    index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
    return index


@contextlib.contextmanager
def threads_for(queries: int):
    """One thread for a handful of queries, FAISS's default team for batches."""
    if queries >= SMALL_BATCH:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) [nq, k]; ids are -1 where fewer than k vectors exist."""
    k = max(1, min(k, index.ntotal)) if index.ntotal else 1
    with threads_for(len(queries)):
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
