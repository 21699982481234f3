"""Log-likelihood of continuations under a causal LM: batched forward passes, no generation.

Scoring k labels for N queries that share one prompt prefix (the
demonstrations) is the hot loop of in-context classification. The prefix is
run through the model once; its key/value cache is then reused by every
batch of queries, so each query costs only its own tokens:

    prefix ids ──► model ──► KV cache (once)
    [pad pad q1 q1 q1]  ┐
    [pad q2 q2 q2 q2 ]  ├─► model(cache=prefix cache expanded to the batch) ──► last-position logits
    [q3 q3 q3 q3 q3 q3] ┘

Rows are left-padded so that every row's last token sits in the last column:
one `logits_to_keep` slice then holds the next-token distribution of every
row, and the vocabulary projection runs for those positions only.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .attention import short_attention
from .batching import collate, length_batches, shape_buckets, with_oom_backoff
from .device import compute_dtype_now
from .throughput import Throughput


@dataclass
class ScoreStats(Throughput):
    """Rows: query rows scored (each against every continuation); tokens: through the model,
    the cached prefix counted once."""


def cache_kwarg(model) -> str:
    """transformers ≥ 5.2x names the KV cache `cache`; earlier 5.x `past_key_values`."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """The KV cache of a shared prefix, computed once, handed out expanded to any batch size."""

    def __init__(self, model, prefix_ids: Sequence[int], device: torch.device):
        self.model = model
        self.length = len(prefix_ids)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not self.length:
            return
        ids = torch.as_tensor([list(prefix_ids)], device=device)
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, return_dict=True,
                        **({"logits_to_keep": 1} if _keeps_logits(model) else {}))
        cache = getattr(out, "cache", None) or out.past_key_values
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def for_batch(self, batch: int):
        """A fresh cache for `batch` rows; the prefix tensors are shared, not copied, until the
        forward pass appends to them (DynamicLayer concatenates on update)."""
        if not self.length:
            return None
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
        cache = DynamicCache(config=self.model.config)
        if len(cache.layers) != len(self.layers) or not all(type(x) is DynamicLayer for x in cache.layers):
            # Sliding-window or hybrid layers: let the cache class copy the tensors in itself.
            return DynamicCache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                                 for k, v in self.layers], config=self.model.config)
        for layer, (keys, values) in zip(cache.layers, self.layers):
            layer.lazy_initialization(keys, values)
            layer.keys = keys.expand(batch, -1, -1, -1)
            layer.values = values.expand(batch, -1, -1, -1)
        return cache


def default_budget(device: torch.device) -> tuple[int, int]:
    """(rows, new tokens) per forward batch; measured on SmolLM2-135M on 2 CPU cores, 32 rows of
    ~32 tokens over a 300-token cached prefix ran fastest."""
    return (32, 1024) if device.type == "cpu" else (256, 16384)


@torch.inference_mode()
def score_continuations(model, rows: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], *,
                        prefix: Sequence[int] = (), pad_id: int = 0, device: torch.device | None = None,
                        max_batch: int | None = None, max_tokens: int | None = None,
                        progress=None, cache: PrefixCache | None = None) -> tuple[np.ndarray, np.ndarray, ScoreStats]:
    """Summed log-probabilities [rows, continuations] of each continuation after prefix + row.

    Also returns the continuation token counts (for length normalisation) and stats.
    Every row must hold at least one token, or the prefix must. When `progress.should_stop`
    turns true, the batches end there: rows not scored hold NaN (`stats.rows` counts the others).
    `cache`: the prefix's PrefixCache when the caller already has it (then it is not recomputed).
    """
    device = device or next(model.parameters()).device
    default_rows, default_tokens = default_budget(device)
    max_batch, max_tokens = max_batch or default_rows, max_tokens or default_tokens
    started = time.perf_counter()
    stats = ScoreStats(rows=len(rows), tokens=0 if cache is not None else len(prefix))
    with short_attention(model, device):
        cache = cache if cache is not None else PrefixCache(model, prefix, device)
        lengths = np.array([len(c) for c in continuations])
        scores = np.full((len(rows), len(continuations)), np.nan, dtype=np.float64)
        if all(n == 1 for n in lengths):
            # One pass: the next-token distribution after each row scores every label at once.
            targets = torch.as_tensor([c[0] for c in continuations], device=device)
            inputs = [list(r) for r in rows]
            for batch, logprobs in _passes(model, inputs, 1, cache, pad_id, device, max_batch, max_tokens, stats,
                                           progress, progress):
                scores[batch] = logprobs[:, 0, :].index_select(-1, targets).double().cpu().numpy()
        else:
            # A pass per continuation: row + continuation[:-1] predicts each continuation token.
            for j, cont in enumerate(continuations):
                inputs = [list(r) + list(cont[:-1]) for r in rows]
                target = torch.as_tensor(list(cont), device=device)
                positions = torch.arange(len(cont), device=device)
                for batch, logprobs in _passes(model, inputs, len(cont), cache, pad_id, device, max_batch, max_tokens,
                                               stats, progress if j == len(continuations) - 1 else None, progress):
                    scores[batch, j] = logprobs[:, positions, target].sum(-1).double().cpu().numpy()
    stats.rows = int((~np.isnan(scores).any(axis=1)).sum())
    stats.seconds = time.perf_counter() - started
    return scores, lengths, stats


def _passes(model, inputs: list[list[int]], keep: int, cache: PrefixCache, pad_id: int, device, max_batch: int,
            max_tokens: int, stats: ScoreStats, progress, stopper=None):
    """Yield (row indices, log-softmax of the last `keep` positions) batch by batch, until
    `stopper.should_stop`."""
    name = cache_kwarg(model)
    keep_kw = _keeps_logits(model)
    lengths = [len(x) for x in inputs]
    if min(lengths) == 0:
        raise ValueError("every row needs at least one token of its own (keep it out of the cached prefix)")
    out: dict[int, torch.Tensor] = {}
    cap = shape_buckets(lengths, device, compute_dtype_now(model, device))

    def run(batch: np.ndarray) -> None:
        ids, mask, positions = (t.to(device) for t in _after_prefix([inputs[i] for i in batch], pad_id, cache.length,
                                                                    cap))
        kwargs = {name: cache.for_batch(len(batch)), "use_cache": cache.length > 0}
        if keep_kw:
            kwargs["logits_to_keep"] = keep
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, return_dict=True,
                       **kwargs).logits[:, -keep:, :]
        out[id(batch)] = torch.log_softmax(logits.float(), dim=-1)

    def backed_off(size: int) -> None:
        stats.backoffs += 1
        if progress and stats.backoffs == 1:
            progress.log(f"out of memory: splitting batches (now {size} rows); continuing")

    for batch in with_oom_backoff(length_batches(lengths, max_batch, max_tokens, bucket_cap=cap), run, backed_off):
        stats.tokens += int(sum(lengths[i] for i in batch))
        if progress:
            progress.advance(len(batch))
        yield batch, out.pop(id(batch))
        if stopper is not None and getattr(stopper, "should_stop", False):
            return


def _after_prefix(rows: list[list[int]], pad_id: int, past: int, bucket_cap: int | None = None):
    """Left-padded ids (`collate`'s `bucket_cap`), the attention mask with the prefix in front, and position ids
    that continue after the prefix (pads at 0)."""
    batch = collate(rows, pad_id, side="left", bucket_cap=bucket_cap)
    ids, own = batch["input_ids"], batch["attention_mask"]
    positions = (own.cumsum(-1) - 1 + past) * own
    mask = torch.cat([torch.ones((len(rows), past), dtype=own.dtype), own], dim=1)
    return ids, mask, positions
