"""Attention on a CPU at the lengths notebooks use: SDPA's arithmetic as two matmuls and a softmax.

torch's CPU `scaled_dot_product_attention` is slow at short lengths in bf16, on both of its paths:
- without dropout, its flash kernel: forward and backward of 16 × 9 heads × 128 tokens (SmolLM2's shape)
  take 32 ms, against 10 ms for the plain matmul-softmax-matmul in bf16 (5.2 against 1.7 ms at 64 tokens,
  30 against 20 at 256, 49 against 37 at 512; forward only, 1.7-2.1× as well);
- with dropout (MiniLM's attention dropout is 0.1, so every encoder's training takes it), its math path:
  copies q, k and v to fp32 and draws a Mersenne-Twister number per attention weight (2.5-2.6× the plain
  form with `dropout.py`'s masks at 32-64 tokens).
(2 EPYC cores, torch 2.13; `benchmarks/results/utilisation-vm-amd-epyc.md`.) In fp32 without dropout the flash kernel
is as fast or faster, so fp32 keeps it.

The plain form keeps the [batch, heads, queries, keys] weights for the backward pass, as the math path
does (about 5 bytes a weight with dropout: the weights before and after it, and the mask; 4 without); it is
taken only while one layer's weights stay under `MAX_WEIGHTS` elements (about 20 MiB a layer kept) and the
keys under `MAX_KEYS`; longer sequences keep the flash kernel's memory.

`short_attention(model, device)` marks a model's modules for a block. While any model is marked, the "sdpa"
entry of transformers' process-wide `ALL_ATTENTION_FUNCTIONS` is `attention` below, which computes for the
marked modules' calls it can take and passes every other call (another model, a GPU tensor, a long
sequence, a position bias or softcap) to the function it replaced, unchanged.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .dropout import drawable, dropped

MAX_KEYS = 512
MAX_WEIGHTS = 1 << 22       # elements of one layer's attention weights (8 MiB in bf16)
LOW_PRECISION = (torch.bfloat16, torch.float16)

_marked: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_lock = threading.Lock()
_blocks = 0
_replaced: Callable | None = None          # the "sdpa" override in place before ours (None: transformers' own)


def _interface():
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    return ALL_ATTENTION_FUNCTIONS if "sdpa" in ALL_ATTENTION_FUNCTIONS else None


@contextlib.contextmanager
def short_attention(model: nn.Module, device: torch.device) -> Iterator[bool]:
    """`model`'s SDPA attention computes as plain matmuls where that is faster (see above), inside the block."""
    interface = _interface() if device.type == "cpu" else None
    if interface is None:
        yield False
        return
    modules = [m for m in model.modules() if m not in _marked]
    _enter(interface, modules)
    try:
        yield True
    finally:
        _leave(interface, modules)


def _enter(interface, modules: list[nn.Module]) -> None:
    global _blocks, _replaced
    with _lock:
        if _blocks == 0:
            _replaced = interface._local_mapping.get("sdpa")
            interface["sdpa"] = attention
        _blocks += 1
        _marked.update(modules)


def _leave(interface, modules: list[nn.Module]) -> None:
    global _blocks
    with _lock:
        for module in modules:
            _marked.discard(module)
        _blocks -= 1
        if _blocks == 0:
            if _replaced is None:
                del interface["sdpa"]
            else:
                interface["sdpa"] = _replaced


def _replaced_function() -> Callable:
    if _replaced is not None:
        return _replaced
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    return sdpa_attention_forward


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa_attention_forward`, the same inputs and result; plain matmuls where `_takes` says."""
    if not _takes(module, query, key, dropout, kwargs):
        return _replaced_function()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    is_causal=is_causal, **kwargs)
    return _math(module, query, key, value, attention_mask, dropout, scaling, is_causal)


def _math(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attention_mask: torch.Tensor | None, dropout: float, scaling: float | None,
          is_causal: bool | None) -> tuple[torch.Tensor, None]:
    """softmax(q·kᵀ·scale + mask), dropped, times v: in the inputs' dtype (softmax accumulates in fp32)."""
    from transformers.integrations.sdpa_attention import repeat_kv   # each key/value head per query head it serves
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    queries = query.shape[2]
    # SDPA's own causal mask (upper-left aligned), as transformers asks for it: no mask given and more than one query
    causal = queries > 1 and attention_mask is None and (is_causal if is_causal is not None
                                                           else getattr(module, "is_causal", True))
    if causal:
        key, value = key[:, :, :queries], value[:, :, :queries]
        attention_mask = torch.ones(queries, queries, dtype=torch.bool, device=query.device).tril()
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling if scaling is not None else query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min) \
            if attention_mask.dtype == torch.bool else scores + attention_mask
    weights = torch.softmax(scores, dim=-1)
    if dropout > 0:
        weights = dropped(weights, dropout)
    out = torch.matmul(weights, value)
    return out.transpose(1, 2).contiguous(), None


def _takes(module: nn.Module, query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict) -> bool:
    if module not in _marked or query.device.type != "cpu" or query.dim() != 4:
        return False
    if kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None \
            or kwargs.get("output_attentions"):
        return False
    if dropout and not drawable(dropout) or query.dtype not in LOW_PRECISION and not dropout:
        return False
    batch, heads, queries, keys = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
    return keys <= MAX_KEYS and batch * heads * queries * keys <= MAX_WEIGHTS
