"""Load models and tokenizers once per session.

Running a cell twice must not reload: models are cached by (source, head,
device, dtype) until `%llm free`. Training methods take a fresh copy
(`fresh=True`) so they never modify the cached one in place.
"""
from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.device import dtype_name, empty_cache
from ..engine.rng import constructing
from ..errors import UsageError
from .quiet import quiet  # noqa: F401 - re-exported: load() and callers use it
from .sources import ModelSource, resolve

HEADS = ("base", "causal_lm", "classify")


@dataclass
class Loaded:
    source: ModelSource
    model: Any
    tokenizer: Any
    head: str
    device: torch.device
    dtype: torch.dtype
    extra: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return architecture_kind(self.model.config)

    @property
    def fingerprint(self) -> str:
        commit = getattr(self.model.config, "_commit_hash", None)
        return f"{self.source.fingerprint}@{commit}" if commit and not self.source.local else self.source.fingerprint

    def describe(self) -> str:
        return f"{self.source.short} ({type(self.model).__name__}, {self.device}, {dtype_name(self.dtype)})"


_models: dict[tuple, Loaded] = {}
_tokenizers: dict[str, Any] = {}
# Results that hold a model (for .predict/.generate) register here so that
# `%llm free` can make them let go too; weak, so a dropped Result is not kept.
_holders: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()


def hold(result) -> None:
    """Register an object with a `release()` method that `free()` will call."""
    _holders[id(result)] = result


def architecture_kind(config) -> str:
    """'encoder' (BERT-like), 'decoder' (GPT/Llama-like) or 'encoder-decoder'."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or "LMHead" in archs:
        return "decoder"
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    return "decoder"


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    if source.fingerprint not in _tokenizers:
        from transformers import AutoTokenizer
        try:
            with quiet():
                tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise UsageError(f"could not load a tokenizer for {source.name!r}: {str(exc).splitlines()[0]}") from None
        if tok.pad_token is None:  # decoders often ship without one; batching needs it
            tok.pad_token = tok.eos_token or tok.unk_token
        _tokenizers[source.fingerprint] = tok
    return _tokenizers[source.fingerprint]


def _auto_class(head: str):
    import transformers
    return {"base": transformers.AutoModel, "causal_lm": transformers.AutoModelForCausalLM,
            "classify": transformers.AutoModelForSequenceClassification}[head]


def load_model(name_or_source: str | ModelSource | None, head: str = "base", device: torch.device | None = None,
               dtype: torch.dtype | None = None, *, fresh: bool = False, trust_remote_code: bool = False,
               **model_kwargs) -> Loaded:
    """The model with the given head on the device, in eval mode; cached unless `fresh`."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}")
    source = name_or_source if isinstance(name_or_source, ModelSource) else resolve(name_or_source)
    device = device or torch.device("cpu")
    dtype = dtype or torch.float32
    key = (source.fingerprint, head, str(device), str(dtype), tuple(sorted(map(str, model_kwargs.items()))))
    if not fresh and key in _models:
        return _models[key]
    tokenizer = load_tokenizer(source, trust_remote_code)
    quantized = "quantization_config" in model_kwargs
    if quantized:  # bitsandbytes places the weights itself; `.to()` is refused on quantized models
        model_kwargs = {**model_kwargs, "device_map": {"": device.index or 0}}
    try:
        with constructing(), quiet():   # one load at a time: from_pretrained patches globals (engine/rng.py)
            model = _auto_class(head).from_pretrained(source.path, dtype=dtype,
                                                      trust_remote_code=trust_remote_code, **model_kwargs)
    except (OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "trust_remote_code" in str(exc):
            message = "it has custom code; pass --trust-remote-code if you trust its author"
        raise UsageError(f"could not load {source.name!r} as a {head.replace('_', '-')} model: {message}") from None
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not quantized:
        model.to(device)
    model.eval()
    loaded = Loaded(source, model, tokenizer, head, device, dtype)
    if not fresh:
        _models[key] = loaded
    return loaded


def cached() -> list[Loaded]:
    return list(_models.values())


def free() -> int:
    """Drop every cached model and release accelerator memory; returns how many were dropped."""
    count = len(_models) + len(_holders)
    for holder in list(_holders.values()):
        holder.release()
    _models.clear()
    _tokenizers.clear()
    gc.collect()
    empty_cache()
    return count


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
