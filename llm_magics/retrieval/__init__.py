"""Retrieval: documents → token-aware chunks → vectors (FAISS) + BM25 → the top-k chunks for a query."""
from .chunking import Chunks, check_sizes, chunk_documents
from .documents import load_documents
from .embedder import Embedder, load_embedder
from .store import Index, Manifest, name_problem, open_index

__all__ = ["Chunks", "check_sizes", "chunk_documents", "load_documents", "Embedder", "load_embedder", "Index",
           "Manifest", "name_problem", "open_index"]
