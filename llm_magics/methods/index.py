"""`%index`: documents → token-aware chunks → vectors in FAISS (+ BM25) on disk → top-k chunks.

    %index build wiki --from docs/ --chunk 256 --overlap 32
    %index query wiki "when did the Normans conquer England" -k 5
    %index eval wiki qa_df --text question --relevant doc -k 5     # hit@k per query, for compare --paired
    %index add wiki --from new_notes.md
    %index delete wiki new_notes.md
    %index list | info wiki | drop wiki

An index is a folder under the settings cache (FAISS's own file, a parquet
chunk table, bm25s arrays, a JSON manifest), so it outlives the kernel.
`%%icl --index NAME` puts its top chunks into a prompt's {context}.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..common_options import ModelOptions, RunOptions
from ..data import lookup
from ..engine.device import pick_dtype
from ..errors import UsageError, did_you_mean
from ..method import Command, Method, Result
from ..models import count_parameters
from ..options import option, positive
from ..retrieval import chunk_documents, check_sizes, load_documents, load_embedder
from ..retrieval import store
from ..retrieval.store import MODES, Index, Manifest, name_problem
from ..retrieval.vectors import KINDS, PRECISIONS, Params, precision_notes, resolve_kind, settle
from ..runner import run_method


def _name(help_text: str = "the index: a plain name (one folder under the cache)"):
    return option(help=help_text, positional=True, check=name_problem, metavar="NAME")


@dataclass(kw_only=True)
class SourceOptions:
    source: Any = option(help="documents: a folder, a file (txt, md, html, pdf, csv, jsonl, parquet), a DataFrame "
                              "or list variable, or a dataset name", flag="--from", metavar="PATH|VARIABLE")
    text: str | None = option(None, "text column of tabular sources (default: inferred)", metavar="COLUMN")
    doc_id: str | None = option(None, "column naming each document, shown as `source` and used by delete "
                                      "(default: the file path, or VARIABLE#row)", metavar="COLUMN")


@dataclass(kw_only=True)
class BuildOptions(RunOptions, ModelOptions, SourceOptions):
    name: str = _name()
    model: str | None = option("minilm", "the encoder: an alias, a local folder or a hub id")
    chunk: int | None = option(None, "tokens per chunk (default: as many as the encoder reads, 254 for minilm)",
                               check=positive)
    overlap: int = option(32, "tokens shared by neighbouring chunks", check=lambda v: None if v >= 0
                          else f"must be ≥ 0, got {v}")
    kind: str = option("flat", "FAISS index: flat (exact), hnsw, ivf, or auto (by corpus size)", choices=KINDS)
    nlist: int | None = option(None, "ivf: inverted lists (default 4·√chunks)", check=positive)
    nprobe: int | None = option(None, "ivf: lists searched per query (default max(4, nlist/8))", check=positive)
    hnsw_m: int = option(32, "hnsw: neighbours per node", check=positive)
    ef_construction: int = option(80, "hnsw: candidates while building", check=positive)
    ef_search: int = option(64, "hnsw: candidates while searching", check=positive)
    precision: str = option("auto", "how vectors are stored: float32; float16 (half the memory, about twice as "
                                    "fast to scan, scores ~1e-3 off); auto: flat scans float16 and rescores the best "
                                    "candidates in float32 (float32's results, float16's speed, 1.5x the memory), "
                                    "other kinds float32", choices=PRECISIONS)
    lexical: bool = option(True, "also keep a BM25 index for hybrid (dense + keyword) search")
    replace: bool = option(False, "replace an existing index of the same name")
    cache: bool = option(True, "reuse chunk vectors cached on disk when the same documents are indexed again "
                               "(a rebuild with another --kind skips the encoder)")
    batch_tokens: int | None = option(None, "padded tokens per encoder batch (default: 1024 on CPU)",
                                      check=positive)


@dataclass(kw_only=True)
class AddOptions(RunOptions, SourceOptions):
    name: str = _name()
    device: str = option("auto", "auto (CUDA → MPS → CPU), cpu, cuda, cuda:N or mps")
    trust_remote_code: bool = option(False, "let the index's encoder run its repository's own code (only for "
                                            "authors you trust; an index built with it needs it again)")


@dataclass(kw_only=True)
class QueryOptions(RunOptions):
    name: str = _name()
    query: Any = option(help="the query text, or a variable holding a list, Series or DataFrame of queries",
                        positional=True, metavar="QUERY")
    k: int = option(5, "chunks per query", short="-k", check=positive)
    text: str | None = option(None, "query column when QUERY is a DataFrame (default: inferred)", metavar="COLUMN")
    mode: str = option("auto", "dense, lexical (BM25), hybrid (both, rank-fused), auto: hybrid when BM25 is kept",
                       choices=MODES)
    nprobe: int | None = option(None, "ivf: lists searched (default: the index's)", check=positive)
    ef_search: int | None = option(None, "hnsw: candidates searched (default: the index's)", check=positive)
    candidates: int | None = option(None, "hybrid: candidates taken from each retriever (default max(50, 5k))",
                                    check=positive)
    rrf_k: int = option(60, "hybrid: the rank constant of reciprocal rank fusion", check=positive)
    device: str = option("auto", "where the query encoder runs")
    trust_remote_code: bool = option(False, "let the index's encoder run its repository's own code (only for "
                                            "authors you trust; an index built with it needs it again)")


@dataclass(kw_only=True)
class EvalOptions(QueryOptions):
    query: Any = option(help="a DataFrame of queries, each with the document source it should find",
                        positional=True, metavar="QUERIES")
    text: str | None = option(None, "the query column of QUERIES (default: inferred)", metavar="COLUMN")
    relevant: str = option("source", "column holding each query's relevant document source (as %index query shows "
                                     "it), or a list of them", metavar="COLUMN")


@dataclass(kw_only=True)
class DeleteOptions:
    name: str = _name()
    source: str = option(help="the document source to remove, matched exactly ('a[1].txt' is that name)",
                         positional=True, metavar="SOURCE")
    glob: bool = option(False, "match SOURCE as a glob pattern instead ('docs/*.md', 'a[12].txt')")


@dataclass(kw_only=True)
class NameOptions:
    name: str = _name()


@dataclass(kw_only=True)
class ListOptions(RunOptions):
    pass


@dataclass(repr=False)
class IndexResult(Result):
    """A build or an add: what went in, how fast, and where it lives."""
    index: str = ""
    info: dict = None

    def query(self, text, k: int = 5, **kwargs) -> pd.DataFrame:
        return run_method("index", "query", name=self.index, query=text, k=k, **kwargs)


@dataclass(repr=False)
class IndexEvalResult(Result):
    """An index scored on queries with known answers: hit@k and MRR@k, and one row per query in
    `.predictions` (hit 0/1 as `correct`, `rank`), which `%llm compare A B --paired` pairs."""
    index: str = ""
    mode: str = ""


class IndexMethod(Method):
    name = "index"
    summary = ("Indexing for retrieval: documents are cut into token-aware chunks, embedded (minilm by default) "
               "and stored in FAISS with BM25 beside it, one folder per index; queries return the top-k chunks.")
    Options = ListOptions   # `%index` alone lists the indexes
    commands = {
        "build": Command(BuildOptions, "build", "chunk, embed and store documents as a new index"),
        "add": Command(AddOptions, "add", "add documents to an index (a source already in it is replaced)"),
        "query": Command(QueryOptions, "query", "top-k chunks for a query, or for each of a list of queries",
                         records_run=False),
        "eval": Command(EvalOptions, "evaluate", "hit@k and MRR@k on queries with known answers, one row per query "
                        "kept for %llm compare --paired"),
        "delete": Command(DeleteOptions, "delete", "remove a document (by source) from an index", records_run=False),
        "list": Command(ListOptions, "list_indexes", "the indexes and their sizes", records_run=False),
        "info": Command(NameOptions, "info", "one index: model, kind, knobs, counts, folder", records_run=False),
        "drop": Command(NameOptions, "drop", "delete an index's folder", records_run=False),
    }

    def run(self, o: ListOptions, ctx) -> pd.DataFrame:
        return self.list_indexes(o, ctx)

    # ---- build and add -------------------------------------------------------------
    def build(self, o: BuildOptions, ctx) -> IndexResult:
        if store.exists(o.name) and not o.replace:
            raise UsageError(f"index {o.name!r} exists; pass --replace to rebuild it, or %index add {o.name} "
                             "--from ... to add documents")
        notes: list[str] = []
        docs = load_documents(o.source, ctx.namespace, o.text, o.doc_id, notes)
        device = ctx.device(o.device)
        embedder = load_embedder(o.model, device, pick_dtype(device, o.dtype), o.trust_remote_code)
        size, size_notes = check_sizes(o.chunk or embedder.max_chunk_tokens, o.overlap, embedder.max_chunk_tokens)
        started = time.perf_counter()
        chunks = chunk_documents(docs, embedder.tokenizer, size, o.overlap)
        if not len(chunks):
            raise UsageError(f"--from {o.source}: the documents hold no text the encoder can read")
        params = Params(kind=resolve_kind(o.kind, len(chunks)), nlist=o.nlist, nprobe=o.nprobe, hnsw_m=o.hnsw_m,
                        ef_construction=o.ef_construction, ef_search=o.ef_search, precision=o.precision)
        settle(params, len(chunks))   # too few chunks for --nlist fails here, before the encoder runs
        progress = ctx.progress(f"index build {o.name} · {embedder.loaded.source.short}")
        progress.start(total=len(chunks), unit="chunks", model=embedder.loaded.source.short, device=str(device))
        vectors, stats = encode_chunks(embedder, chunks, size, o.overlap, ctx, progress, o.batch_tokens, o.cache)
        if stats.rows == 0:
            notes.append("chunk vectors read from the cache: the encoder did not run")
        progress.log(f"storing {len(chunks):,} vectors in a {params.kind} index")
        manifest = Manifest(name=o.name, model=o.model, model_fingerprint=embedder.loaded.fingerprint,
                            dim=embedder.dim, pooling=embedder.pooling, chunk=size, overlap=o.overlap,
                            params=params.to_dict(), lexical=o.lexical, dtype=embedder.dtype,
                            trust_remote_code=o.trust_remote_code)
        index = Index.create(manifest, embedder.dim, vectors)
        index.upsert(chunks.frame, vectors)
        index.save()
        seconds = time.perf_counter() - started
        progress.end("ok", chunks=len(chunks))
        notes += size_notes
        if o.kind == "auto":
            notes.append(f"--kind auto chose {params.kind} for {len(chunks):,} chunks")
        notes += precision_notes(params)
        return self._result(index, embedder, stats, docs, len(chunks), seconds, notes)

    def add(self, o: AddOptions, ctx) -> IndexResult:
        index = store.open_index(o.name)
        notes: list[str] = []
        docs = load_documents(o.source, ctx.namespace, o.text, o.doc_id, notes)
        manifest = index.manifest
        embedder = index.embedder(ctx.device(o.device), o.trust_remote_code)
        if embedder.loaded.fingerprint != manifest.model_fingerprint:
            notes.append(f"the encoder {manifest.model!r} changed since the index was built; "
                         "rebuild it (--replace) for comparable vectors")
        started = time.perf_counter()
        chunks = chunk_documents(docs, embedder.tokenizer, manifest.chunk, manifest.overlap)
        progress = ctx.progress(f"index add {o.name}")
        progress.start(total=len(chunks), unit="chunks")
        vectors, stats = encode_chunks(embedder, chunks, manifest.chunk, manifest.overlap, ctx, progress)
        replaced = index.upsert(chunks.frame, vectors)
        index.save()
        progress.end("ok", chunks=len(chunks))
        if replaced:
            notes.append(f"{replaced} chunks of sources already in the index were replaced")
        return self._result(index, embedder, stats, docs, len(chunks), time.perf_counter() - started, notes)

    def _result(self, index: Index, embedder, stats, docs: pd.DataFrame, chunks: int, seconds: float,
                notes: list[str]) -> IndexResult:
        from ..data import fingerprint
        info = index.describe()
        result = IndexResult(
            method=self.name, model=embedder.loaded.source.short, device=str(embedder.device), dtype=embedder.dtype,
            data_fingerprint=fingerprint(docs), total_params=count_parameters(embedder.model),
            metrics={"documents": len(docs), "chunks": chunks, "index_chunks": info["chunks"],
                     "index_documents": info["documents"], "dim": info["dim"], "build_s": round(seconds, 3),
                     "encode_s": round(stats.seconds, 3), "size_mb": info["size_mb"]},
            artifacts={"index": info["folder"]}, notes=notes, index=index.name, info=info,
        )
        result.rows_per_s = len(docs) / seconds if seconds else None
        result.tokens_per_s = stats.tokens_per_s
        result.metrics["chunks_per_s"] = round(chunks / seconds, 1) if seconds else None
        return result

    # ---- query ---------------------------------------------------------------------
    def query(self, o: QueryOptions, ctx) -> pd.DataFrame:
        index = store.open_index(o.name)
        queries = query_texts(o.query, ctx.namespace, o.text)
        mode = index.resolve_mode(o.mode)
        embedder = index.embedder(ctx.device(o.device), o.trust_remote_code) if mode in ("dense", "hybrid") \
            else None
        frame = index.search(queries, o.k, embedder, mode, o.nprobe, o.ef_search, o.candidates, o.rrf_k)
        return frame.drop(columns=["query_id", "query"] if len(queries) == 1 else ["query_id"])

    def evaluate(self, o: EvalOptions, ctx) -> IndexEvalResult:
        from ..data import fingerprint
        from ..runs import predictions
        from ..retrieval import scoring
        index = store.open_index(o.name)
        frame = lookup(o.query, ctx.namespace)
        if not isinstance(frame, pd.DataFrame):
            raise UsageError(f"%index eval takes a DataFrame of queries with a {o.relevant!r} column, "
                             f"not a {type(frame).__name__}")
        if o.relevant not in frame:
            raise UsageError(f"--relevant {o.relevant}: the queries have no such column (columns: "
                             f"{', '.join(map(str, frame.columns))})")
        queries = query_texts(frame, ctx.namespace, o.text)
        relevant = scoring.relevant_sets(frame[o.relevant])
        known = set(index.chunks["source"].astype(str))
        if not any(r & known for r in relevant):
            sample = ", ".join(sorted(known)[:3])
            raise UsageError(f"--relevant {o.relevant}: no query names a source in index {o.name!r} "
                             f"(sources look like: {sample})")
        mode = index.resolve_mode(o.mode)
        embedder = index.embedder(ctx.device(o.device), o.trust_remote_code) if mode != "lexical" else None
        started = time.perf_counter()
        hits = index.search(queries, o.k, embedder, mode, o.nprobe, o.ef_search, o.candidates, o.rrf_k)
        seconds = time.perf_counter() - started
        kept = scoring.per_query(queries, relevant, hits)
        result = IndexEvalResult(method=self.name, metrics=scoring.metrics(kept, o.k), model=index.manifest.model,
                                 data_fingerprint=fingerprint(frame), index=index.name, mode=mode,
                                 device=str(embedder.device) if embedder else "cpu",
                                 dtype=(index.manifest.dtype or "") if embedder else "",
                                 rows_per_s=len(queries) / max(seconds, 1e-9))   # queries searched a second
        result.predictions = predictions.kept_with_run(kept, ctx.run_dir, result.artifacts)
        missing = sum(not (r & known) for r in relevant)
        if missing:
            result.notes.append(f"{missing} of {len(queries)} queries name no source in the index: counted as misses")
        return result

    # ---- housekeeping -------------------------------------------------------------
    def delete(self, o: DeleteOptions, ctx) -> dict:
        index = store.open_index(o.name)
        removed = index.delete(o.source, o.glob)
        if not removed:
            sample = ", ".join(map(str, index.chunks["source"].drop_duplicates().head(3)))
            as_glob = not o.glob and index._matching(o.source, glob=True).any()
            raise UsageError(f"index {o.name!r} has no document with source {o.source!r}"
                             + ("; it matches some as a pattern: add --glob to delete those" if as_glob else
                                f" (sources look like: {sample})" if sample else ""))
        index.save()
        return {"index": o.name, "removed_chunks": removed, "chunks": index.manifest.chunks,
                "documents": index.manifest.documents}

    def list_indexes(self, o, ctx) -> pd.DataFrame:
        rows = []
        for name in store.names():
            try:
                info = store.open_index(name).describe()
            except Exception as exc:  # a damaged folder is listed, not fatal
                rows.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append({k: info[k] for k in ("name", "documents", "chunks", "model", "kind", "lexical", "size_mb",
                                              "updated")})
        return pd.DataFrame(rows, columns=None if rows else ["name", "documents", "chunks", "model", "kind",
                                                              "lexical", "size_mb", "updated"])

    def info(self, o: NameOptions, ctx) -> dict:
        return store.open_index(o.name).describe()

    def drop(self, o: NameOptions, ctx) -> None:
        if not store.drop(o.name):
            raise UsageError(f"no index named {o.name!r}" + did_you_mean(o.name, store.names()))
        ctx.write(f"dropped index {o.name!r}\n")


def encode_chunks(embedder, chunks, size: int, overlap: int, ctx, progress, batch_tokens: int | None = None,
                  use_cache: bool = True):
    """Chunk vectors, from the feature cache when these exact chunks were encoded before."""
    from ..engine.features import FeatureCache
    from ..retrieval.embedder import EncodeStats
    cache = FeatureCache(ctx.settings.subdir("features")) if use_cache else None
    texts = chunks.frame["text"].tolist()
    key = cache.key(embedder.loaded.fingerprint, texts, f"index:{embedder.pooling}:{size}/{overlap}",
                    embedder.max_length, embedder.dtype) if cache else None
    if cache:
        found = cache.get(key, 0)
        if found is not None and found.shape == (len(texts), embedder.dim):
            progress.advance(len(texts))
            return found, EncodeStats()
    vectors, stats = embedder.encode_ids(chunks.ids, progress, max_tokens=batch_tokens)
    if cache:
        cache.put(key, 0, vectors)
    return vectors, stats


def query_texts(ref: Any, namespace: dict | None, column: str | None = None) -> list[str]:
    """A query string, or a list / Series / DataFrame column of them."""
    from ..data import infer_text_column
    obj = lookup(ref, namespace)
    if isinstance(obj, str):
        if not obj.strip():
            raise UsageError("the query is empty; pass a text, or a variable holding a list of texts")
        return [obj]
    if isinstance(obj, pd.DataFrame):
        col = infer_text_column(obj, column, flag="--text", role="the queries")
        obj = obj[col]
    if isinstance(obj, (pd.Series, np.ndarray, list, tuple)):
        texts = [str(x) for x in list(obj)]
        if not texts:
            raise UsageError("the list of queries is empty")
        return texts
    raise UsageError(f"cannot query with a {type(obj).__name__}; pass a text, a list, a Series or a DataFrame")
