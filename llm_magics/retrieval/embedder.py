"""Texts (or already-cut token windows) → L2-normalised vectors with a frozen encoder.

Reads a sentence-transformers folder's own settings (pooling, max length)
so `minilm` gives the vectors its authors trained for; any other model gets
mean pooling (encoders) or last-token pooling (decoders). Vectors are always
L2-normalised: the index scores by inner product, which is then cosine.
Batches are length-sorted under a token budget and padded per batch, the same
recipe as the probe features, and run in bf16 on CPUs that do it natively.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..engine.batching import collate, length_batches, shape_buckets, with_oom_backoff
from ..engine.device import compute_dtype_now, dtype_name
from ..engine.features import batch_budget, default_pooling, pool
from ..engine.throughput import Throughput


@dataclass
class EncodeStats(Throughput):
    """Texts (rows) and their tokens through the encoder."""


def sentence_transformers_settings(folder: str) -> dict:
    """pooling / max_seq_length from a sentence-transformers folder, when it is one."""
    root = Path(folder)
    out: dict = {}
    try:
        config = json.loads((root / "sentence_bert_config.json").read_text())
        out["max_seq_length"] = int(config.get("max_seq_length") or 0) or None
    except (OSError, ValueError):
        pass
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return out
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            try:
                pooling = json.loads((root / module["path"] / "config.json").read_text())
            except (OSError, ValueError, KeyError):
                continue
            if pooling.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif pooling.get("pooling_mode_lasttoken"):
                out["pooling"] = "last"
            elif pooling.get("pooling_mode_mean_tokens"):
                out["pooling"] = "mean"
    return out


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] … [SEP] for BERT)."""
    bare = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return full[:start], full[start + len(bare):]
    return [], []


class Embedder:
    """A loaded encoder (`llm_magics.models.Loaded`) that turns texts into unit vectors."""

    def __init__(self, loaded):
        self.loaded = loaded
        self.model, self.tokenizer, self.device = loaded.model, loaded.tokenizer, loaded.device
        settings = sentence_transformers_settings(loaded.source.path) if loaded.source.local else {}
        self.pooling = settings.get("pooling") or default_pooling(loaded.kind)
        positions = getattr(self.model.config, "max_position_embeddings", None) or 512
        limit = settings.get("max_seq_length") or min(positions, getattr(self.tokenizer, "model_max_length", positions))
        self.max_length = int(min(limit, positions))
        self.head, self.tail = special_tokens(self.tokenizer)
        self.specials = len(self.head) + len(self.tail)
        self.dim = int(self.model.config.hidden_size)

    @property
    def max_chunk_tokens(self) -> int:
        """Content tokens one window may hold (the encoder adds its special tokens)."""
        return self.max_length - self.specials

    @property
    def dtype(self) -> str:
        return dtype_name(self.loaded.dtype)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                                 max_length=self.max_chunk_tokens, return_attention_mask=False, verbose=False)
        return encoded["input_ids"]

    def encode(self, texts: Sequence[str], progress=None) -> tuple[np.ndarray, EncodeStats]:
        return self.encode_ids(self.tokenize(texts), progress)

    @torch.inference_mode()
    def encode_ids(self, windows: Sequence[Sequence[int]], progress=None,
                   max_tokens: int | None = None) -> tuple[np.ndarray, EncodeStats]:
        started = time.perf_counter()
        rows = [self.head + list(w) + self.tail for w in windows]
        lengths = [len(r) for r in rows]
        out = np.zeros((len(rows), self.dim), dtype=np.float32)
        if not rows:
            return out, EncodeStats()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        max_batch, budget = batch_budget(self.device)
        cap = shape_buckets(lengths, self.device, compute_dtype_now(self.model, self.device))

        def run(batch: np.ndarray) -> None:
            inputs = collate([rows[i] for i in batch], pad_id, bucket_cap=cap)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            hidden = self.model(**inputs, return_dict=True).last_hidden_state
            out[batch] = pool(hidden, inputs["attention_mask"], self.pooling).float().cpu().numpy()

        for batch in with_oom_backoff(length_batches(lengths, max_batch, max_tokens or budget, bucket_cap=cap), run):
            if progress:
                progress.advance(len(batch))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, 1e-12)
        return out, EncodeStats(len(rows), int(sum(lengths)), time.perf_counter() - started)


def load_embedder(model: str | None, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False):
    from ..models import load_model
    return Embedder(load_model(model or "minilm", "base", device, dtype, trust_remote_code=trust_remote_code))
