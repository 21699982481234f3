"""Token-aware chunking: windows of at most `size` tokens of the embedding model, `overlap` shared.

Chunks are cut on the model's own tokens, so none is truncated by the encoder,
and each chunk's text is the exact span of the document it came from (from
the tokenizer's offsets, not a lossy decode). The token ids are kept: the
encoder reuses them instead of tokenizing every chunk a second time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ..errors import UsageError


@dataclass
class Chunks:
    frame: pd.DataFrame                          # text, source, position, start, end
    ids: list[list[int]] = field(repr=False)     # content token ids of each chunk (no special tokens)

    def __len__(self) -> int:
        return len(self.frame)


def check_sizes(size: int, overlap: int, limit: int) -> tuple[int, list[str]]:
    """The chunk size to use (capped at what the encoder reads) and notes about it."""
    notes = []
    if overlap >= size:
        raise UsageError(f"--overlap {overlap} must be smaller than --chunk {size}")
    if size > limit:
        notes.append(f"--chunk {size} is more than the encoder reads; chunks hold {limit} tokens")
        size = limit
        if overlap >= size:
            raise UsageError(f"--overlap {overlap} must be smaller than the encoder's {limit}-token chunks")
    return size, notes


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows [start, end) covering n tokens; the last one ends at n."""
    if n <= size:
        return [(0, n)]
    step = size - overlap
    out, start = [], 0
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            return out
        start += step


def chunk_documents(docs: pd.DataFrame, tokenizer, size: int, overlap: int, batch: int = 256) -> Chunks:
    """Cut each document (`text`, `source`) into token windows; keeps source and position."""
    if not getattr(tokenizer, "is_fast", False):
        return _chunk_by_decoding(docs, tokenizer, size, overlap)
    rows, ids = [], []
    texts, sources = docs["text"].tolist(), docs["source"].tolist()
    for first in range(0, len(texts), batch):
        part = texts[first:first + batch]
        encoded = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True,
                            return_attention_mask=False, truncation=False, verbose=False)
        for text, source, tokens, offsets in zip(part, sources[first:first + batch], encoded["input_ids"],
                                                 encoded["offset_mapping"]):
            for position, (start, end) in enumerate(windows(len(tokens), size, overlap)):
                if start == end:
                    continue
                lo, hi = offsets[start][0], offsets[end - 1][1]
                rows.append((text[lo:hi], source, position, lo, hi))
                ids.append(tokens[start:end])
    frame = pd.DataFrame(rows, columns=["text", "source", "position", "start", "end"])
    return Chunks(frame, ids)


def _chunk_by_decoding(docs: pd.DataFrame, tokenizer, size: int, overlap: int) -> Chunks:
    """Slow tokenizers have no offsets: the chunk text is decoded, its span unknown (-1)."""
    rows, ids = [], []
    for text, source in zip(docs["text"], docs["source"]):
        tokens = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        for position, (start, end) in enumerate(windows(len(tokens), size, overlap)):
            if start < end:
                rows.append((tokenizer.decode(tokens[start:end]), source, position, -1, -1))
                ids.append(tokens[start:end])
    return Chunks(pd.DataFrame(rows, columns=["text", "source", "position", "start", "end"]), ids)
