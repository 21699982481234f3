"""What the benchmark scripts share (they run as `python benchmarks/NAME.py`, so this imports as `common`)."""
from __future__ import annotations

import time


def timed(fn):
    """(fn's value, seconds it took)."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def add_threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and FAISS) threads; 1 gives steadier numbers on a shared machine")


def set_threads(threads: int | None) -> None:
    if threads:
        import faiss
        import torch
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
