"""An index on disk: one folder per index under the settings cache, nothing pickled.

    <cache>/indexes/<name>/
        manifest.json     model, dimensions, chunking, FAISS kind and knobs, counts
        vectors.faiss     FAISS's own file (faiss.write_index)
        chunks.parquet    id, text, source, position, start, end (row i = BM25 document i)
        bm25/             bm25s's .npy arrays and JSON vocabulary
        llm_magics_checksums.json   size and SHA-256 of every file above

Every change is made on a copy: `upsert` and `delete` build the new state
beside the old one in memory and take it over whole, and `save` writes a
complete new folder beside the old one and swaps it in whole
(`safe_io.atomic_folder`), so a crash or an interrupt never leaves half an
index, on disk or in the session; what an interrupted save left beside it is
removed on the next open or save. Opening checks every file against its
checksum and the parts against each other and the manifest (vector width and
count, chunk table, BM25 arrays): a damaged index is one UsageError naming the
file, never a traceback or silently wrong results. An index's manifest never
turns on remote code. Opened indexes are kept for the session (keyed by the
manifest's stamp), so a query does not re-read the files.
"""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from .. import settings
from ..errors import UsageError, did_you_mean
from ..safe_io import atomic_folder, clean_stale, verify_manifest, write_manifest
from . import vectors as vec
from .hybrid import fuse
from .lexical import Lexical

FORMAT = 1
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
MODES = ("auto", "dense", "lexical", "hybrid")
CHUNK_COLUMNS = ["id", "text", "source", "position", "start", "end"]


def name_problem(name) -> str | None:
    """Option check: an index name is one folder name, never a path."""
    if name is None:
        return None
    text = str(name)
    if "/" in text or "\\" in text or text in (".", "..") or text.startswith("."):
        return f"{text!r} is a path; an index name is a plain name like wiki or docs-v2"
    if not NAME.match(text):
        return f"{text!r} is not a valid index name; use letters, digits, '_', '-' and '.'"
    return None


def root() -> Path:
    return settings.current().subdir("indexes")


def folder_of(name: str) -> Path:
    problem = name_problem(name)
    if problem:
        raise UsageError(problem)
    return root() / name


def names() -> list[str]:
    return sorted(p.name for p in root().iterdir() if p.is_dir() and (p / "manifest.json").exists()
                  and not p.name.startswith("."))


@dataclass
class Manifest:
    name: str
    model: str
    model_fingerprint: str
    dim: int
    pooling: str
    chunk: int
    overlap: int
    params: dict
    lexical: bool = True
    # How the encoder ran at build time, so queries are embedded the same way
    # (dtype None: an index from before it was recorded; the device's default).
    dtype: str | None = None
    trust_remote_code: bool = False
    next_id: int = 0
    documents: int = 0
    chunks: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    format: int = FORMAT

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        """The manifest at `path`; ValueError saying what is wrong when it is not one."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        missing = [k for k in ("name", "model", "model_fingerprint", "dim", "pooling", "chunk", "overlap", "params")
                   if k not in data]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        for key, kinds in _MANIFEST_TYPES.items():
            value = data.get(key)
            if key in data and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
                raise ValueError(f"{key} is {value!r}")
        if data["dim"] <= 0 or data["chunk"] <= 0 or data["overlap"] < 0:
            raise ValueError(f"dim {data['dim']}, chunk {data['chunk']}, overlap {data['overlap']} are not sizes")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_MANIFEST_TYPES = {
    "name": (str,), "model": (str, type(None)), "model_fingerprint": (str,), "dim": (int,), "pooling": (str,),
    "chunk": (int,), "overlap": (int,), "params": (dict,), "lexical": (bool,), "dtype": (str, type(None)),
    "trust_remote_code": (bool,), "next_id": (int,), "documents": (int,), "chunks": (int,),
    "created": (int, float), "updated": (int, float), "format": (int,),
}


class Index:
    """An opened index: FAISS vectors, the chunk table, BM25."""

    def __init__(self, manifest: Manifest, dense, chunks: pd.DataFrame, lexical: Lexical | None, folder: Path):
        self.manifest = manifest
        self.dense = dense
        self.chunks = chunks.reset_index(drop=True)
        self.lexical = lexical
        self.folder = folder
        self._columns()

    def _columns(self) -> None:
        """Plain arrays of the chunk table: a query picks its ten rows from these in microseconds."""
        self._rows = pd.Index(self.chunks["id"].to_numpy())
        self._text = self.chunks["text"].to_numpy(dtype=object)
        self._source = self.chunks["source"].to_numpy(dtype=object)
        self._position = self.chunks["position"].to_numpy()

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def params(self) -> vec.Params:
        return vec.Params.from_dict(self.manifest.params)

    # ---- creating and changing ---------------------------------------------------
    @classmethod
    def create(cls, manifest: Manifest, dim: int, training: np.ndarray) -> "Index":
        params = vec.Params.from_dict(manifest.params)
        dense = vec.new_index(params, dim, training)
        manifest.params = params.to_dict()
        return cls(manifest, dense, pd.DataFrame(columns=CHUNK_COLUMNS), None, folder_of(manifest.name))

    def upsert(self, chunks: pd.DataFrame, vectors: np.ndarray) -> int:
        """Add chunks; documents whose source is already indexed are replaced. Returns chunks replaced."""
        draft = self._draft()
        replaced = draft._remove_rows(draft.chunks["source"].isin(set(chunks["source"])))
        ids = np.arange(draft.manifest.next_id, draft.manifest.next_id + len(chunks), dtype=np.int64)
        draft.manifest.next_id += len(chunks)
        vec.add(draft.dense, vectors, ids)
        table = chunks.assign(id=ids)[CHUNK_COLUMNS]
        draft.chunks = pd.concat([draft.chunks, table], ignore_index=True) if len(draft.chunks) else table
        self._take(draft)
        return replaced

    def _matching(self, pattern: str, glob: bool = False) -> pd.Series:
        """Rows whose source is `pattern` (literally: 'a[1].txt' is that name), or matches it as a glob."""
        sources = self.chunks["source"].astype(str)
        if not glob:
            return sources == pattern
        return (sources == pattern) | sources.map(lambda s: fnmatch.fnmatchcase(s, pattern))

    def delete(self, pattern: str, glob: bool = False) -> int:
        """Remove every chunk whose source is `pattern` (or, with `glob`, matches it). Returns chunks removed."""
        hit = self._matching(pattern, glob)
        if not hit.any():
            return 0    # nothing changes: no BM25 rebuild, nothing to save
        draft = self._draft()
        removed = draft._remove_rows(hit)
        self._take(draft)
        return removed

    def _draft(self) -> "Index":
        # FAISS changes in place and this object is the session's cached index: change a copy, so a
        # failure midway leaves this one whole. The copy costs the vectors' memory once, for the change.
        manifest = replace(self.manifest, params=dict(self.manifest.params))
        return Index(manifest, faiss.clone_index(self.dense), self.chunks, self.lexical, self.folder)

    def _take(self, draft: "Index") -> None:
        draft._changed()
        self.manifest, self.dense, self.chunks, self.lexical = draft.manifest, draft.dense, draft.chunks, draft.lexical
        self._columns()

    def _remove_rows(self, mask: pd.Series) -> int:
        if not mask.any():
            return 0
        ids = self.chunks.loc[mask, "id"].to_numpy(dtype=np.int64)
        self.dense = vec.remove(self.dense, self.params, ids)
        self.chunks = self.chunks.loc[~mask].reset_index(drop=True)
        return len(ids)

    def _changed(self) -> None:
        self.chunks = self.chunks.astype({"id": "int64", "position": "int64", "start": "int64", "end": "int64"})
        self._columns()
        self.lexical = Lexical.build(self.chunks["text"].tolist()) if self.manifest.lexical and len(self.chunks) \
            else None
        self.manifest.chunks = len(self.chunks)
        self.manifest.documents = int(self.chunks["source"].nunique())
        self.manifest.updated = time.time()

    def save(self) -> None:
        """Write a complete folder beside the old one, with its checksums, then swap it in whole."""
        target = self.folder
        try:
            with atomic_folder(target) as staging:
                self._write(staging)
                write_manifest(staging)
        except BaseException:
            # This object may already hold the change: the session rereads the intact folder instead.
            _opened.pop(str(target), None)
            raise
        _opened[str(target)] = (_stamp(target), self)

    def _write(self, folder: Path) -> None:
        faiss.write_index(self.dense, str(folder / "vectors.faiss"))
        self.chunks.to_parquet(folder / "chunks.parquet", index=False)
        if self.lexical is not None:
            self.lexical.save(folder / "bm25")
        (folder / "manifest.json").write_text(json.dumps(asdict(self.manifest), indent=1))   # last: marks it whole

    def embedder(self, device, trust_remote_code: bool = False):
        """The encoder the chunks were embedded with, loaded in the dtype it ran in then.

        Remote code runs only when this call's caller passes the user's --trust-remote-code: an index
        folder is something a colleague may have written, and its manifest asking for remote code is
        refused, never obeyed."""
        from ..engine.device import pick_dtype
        from .embedder import load_embedder
        m = self.manifest
        if m.trust_remote_code and not trust_remote_code:
            raise UsageError(f"index {m.name!r} was built with --trust-remote-code: its encoder ({m.model}) runs "
                             "its own code; llm-magics never runs it because an index folder asks: pass "
                             "--trust-remote-code in this call if you trust that code")
        return load_embedder(m.model, device, pick_dtype(device, m.dtype), bool(trust_remote_code))

    # ---- searching ----------------------------------------------------------------
    def resolve_mode(self, mode: str) -> str:
        if mode == "auto":
            return "hybrid" if self.lexical is not None else "dense"
        if mode in ("lexical", "hybrid") and self.lexical is None:
            raise UsageError(f"index {self.name!r} was built without BM25 (--no-lexical); use --mode dense")
        return mode

    def search(self, queries: list[str], k: int, embedder=None, mode: str = "auto", nprobe: int | None = None,
               ef_search: int | None = None, candidates: int | None = None, rrf_k: int = 60,
               query_vectors: np.ndarray | None = None) -> pd.DataFrame:
        """Top-k chunks per query: query_id, query, rank, score, text, source, position."""
        mode = self.resolve_mode(mode)
        # --candidates as given (at least k); unset: a wide pool for the fusion
        pool = k if mode == "dense" else max(candidates, k) if candidates else max(5 * k, 50)
        dense_hits = lexical_hits = None
        if mode in ("dense", "hybrid"):
            if query_vectors is None:
                query_vectors, _ = embedder.encode(queries)
            vec.apply_search_params(self.dense, self.params, nprobe, ef_search)
            scores, ids = vec.search(self.dense, query_vectors, pool)
            dense_hits = [self._positions(row_ids, row_scores) for row_ids, row_scores in zip(ids, scores)]
        if mode in ("lexical", "hybrid"):
            lexical_hits = self.lexical.search(queries, pool)
        if mode == "dense":
            ranked = [(p[:k], s[:k]) for p, s in dense_hits]
        elif mode == "lexical":
            ranked = [(p[:k], s[:k]) for p, s in lexical_hits]
        else:
            ranked = [fuse([d, lx], k, rrf_k) for d, lx in zip(dense_hits, lexical_hits)]
        return self._frame(queries, ranked, mode)

    def _positions(self, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = ids >= 0
        return self._rows.get_indexer(ids[keep]), scores[keep]

    def _frame(self, queries: list[str], ranked, mode: str) -> pd.DataFrame:
        counts = [len(p) for p, _ in ranked]
        positions = np.concatenate([p for p, _ in ranked]).astype(np.int64) if ranked else np.zeros(0, np.int64)
        frame = pd.DataFrame({
            "query_id": np.repeat(np.arange(len(queries)), counts),
            "query": np.repeat(np.asarray(queries, dtype=object), counts),
            "rank": np.concatenate([np.arange(1, n + 1) for n in counts]) if counts else [],
            "score": np.concatenate([s for _, s in ranked]).astype(np.float32) if ranked else [],
            "text": self._text[positions],
            "source": self._source[positions],
            "position": self._position[positions],
        })
        frame.attrs.update(index=self.name, mode=mode)
        return frame

    def describe(self) -> dict:
        m = self.manifest
        params = {k: v for k, v in m.params.items() if v is not None}
        return {"name": m.name, "documents": m.documents, "chunks": m.chunks, "model": m.model, "dim": m.dim,
                "dtype": m.dtype, "kind": params.get("kind"), "lexical": m.lexical, "chunk": m.chunk,
                "overlap": m.overlap, "params": params, "size_mb": round(folder_size(self.folder) / 2**20, 2),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created)),
                "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(m.updated)), "folder": str(self.folder)}


_opened: dict[str, tuple[str, Index]] = {}


def _stamp(folder: Path) -> str:
    stat = (folder / "manifest.json").stat()
    return f"{stat.st_mtime_ns}:{stat.st_size}:{stat.st_ino}"


def exists(name: str) -> bool:
    return (folder_of(name) / "manifest.json").exists()


def open_index(name: str) -> Index:
    """The index called `name`, from the session's memory when the folder did not change."""
    folder = folder_of(name)
    if not (folder / "manifest.json").exists():
        clean_stale(folder)     # a save killed between its two renames: the old folder comes back
    if not (folder / "manifest.json").exists():
        raise UsageError(f"no index named {name!r}" + (did_you_mean(name, names()) if names()
                                                        else "; build one with %index build NAME --from PATH"))
    stamp = _stamp(folder)
    cached = _opened.get(str(folder))
    if cached and cached[0] == stamp:
        return cached[1]
    clean_stale(folder)
    index = _load(name, folder)
    _opened[str(folder)] = (stamp, index)
    return index


def _damaged(name: str, what: str) -> UsageError:
    return UsageError(f"index {name!r} is damaged: {what}; rebuild it with %index build {name} --from ... "
                      f"--replace (or remove it with %index drop {name})")


def _load(name: str, folder: Path) -> Index:
    """Read an index folder, checking each part before it is used."""
    problems = verify_manifest(folder)
    if problems:
        raise _damaged(name, problems[0])
    try:
        manifest = Manifest.read(folder / "manifest.json")
    except (OSError, ValueError, TypeError) as exc:
        raise _damaged(name, f"manifest.json is not a valid index manifest ({_short(exc)})") from None
    if manifest.format > FORMAT:
        raise UsageError(f"index {name!r} was written by a newer llm-magics (format {manifest.format}); "
                         "upgrade llm-magics to read it")
    try:
        vec.Params.from_dict(manifest.params)
    except TypeError as exc:
        raise _damaged(name, f"manifest.json has invalid params ({_short(exc)})") from None
    if not (folder / "vectors.faiss").is_file():
        raise _damaged(name, "vectors.faiss is missing")
    try:
        dense = faiss.read_index(str(folder / "vectors.faiss"))
    except (RuntimeError, MemoryError, OSError):
        raise _damaged(name, "vectors.faiss is not a FAISS index FAISS can read (truncated or overwritten)") from None
    if dense.d != manifest.dim:
        raise _damaged(name, f"vectors.faiss holds {dense.d}-dim vectors where manifest.json says {manifest.dim}")
    if dense.ntotal != manifest.chunks:
        raise _damaged(name, f"vectors.faiss holds {dense.ntotal:,} vectors where manifest.json says "
                             f"{manifest.chunks:,} chunks")
    if not (folder / "chunks.parquet").is_file():
        raise _damaged(name, "chunks.parquet is missing")
    try:
        chunks = pd.read_parquet(folder / "chunks.parquet")
    except Exception as exc:   # noqa: BLE001 - pyarrow raises many kinds for a bad file
        raise _damaged(name, f"chunks.parquet cannot be read ({_short(exc)})") from None
    missing = [c for c in CHUNK_COLUMNS if c not in chunks.columns]
    if missing:
        raise _damaged(name, f"chunks.parquet lacks the column(s) {', '.join(missing)}")
    if len(chunks) != manifest.chunks:
        raise _damaged(name, f"chunks.parquet holds {len(chunks):,} chunks where manifest.json says "
                             f"{manifest.chunks:,}")
    ids = pd.to_numeric(chunks["id"], errors="coerce")
    if ids.isna().any() or ids.duplicated().any():
        raise _damaged(name, "chunks.parquet has missing or repeated chunk ids")
    if isinstance(dense, faiss.IndexIDMap2) and len(chunks):
        stored_ids = faiss.vector_to_array(dense.id_map).astype(np.int64)
        if not np.array_equal(np.sort(stored_ids), np.sort(ids.to_numpy(dtype=np.int64))):
            raise _damaged(name, "the ids in vectors.faiss are not the chunk ids of chunks.parquet")
    lexical = None
    if (folder / "bm25").exists():
        try:
            lexical = Lexical.load(folder / "bm25", len(chunks))
        except Exception as exc:   # noqa: BLE001 - bm25s and numpy raise many kinds for bad arrays
            raise _damaged(name, f"bm25/ cannot be used ({_short(exc)})") from None
    elif manifest.lexical and len(chunks):
        raise _damaged(name, "bm25/ is missing though the index keeps BM25")
    return Index(manifest, dense, chunks, lexical, folder)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else "") or type(exc).__name__


def drop(name: str) -> bool:
    folder = folder_of(name)
    _opened.pop(str(folder), None)
    clean_stale(folder)
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
