"""What a training run swaps in for its length, for speed on its device: the same arithmetic, less work.

`fast_paths(model, device, autocast)` combines those below; the training loops (ours, and TRL's through
`%rlhf`) run inside it.

**Cheaper dropout masks on CPUs.** `cheap_dropout(model, device)` swaps every `nn.Dropout` for a
`dropout.WordDropout` for the length of a training run on a CPU and puts the originals back after; elsewhere
(CUDA's fused Philox dropout is fast) it does nothing.

**Attention as plain matmuls at short lengths on CPUs** (`attention.short_attention`): faster than torch's
CPU SDPA kernels in bf16 and wherever attention drops weights.

**No fp32 round trip into the adapters under autocast.** PEFT casts an adapter's input to its weight's
dtype (fp32) before its dropout and `lora_A`; autocast then casts it back to bf16 for the matmul: two
copies of every adapted layer's input per forward, and two more of its gradient, for a result autocast
rounds to bf16 anyway. Under autocast that cast is off (PEFT's own switch, `cast_input_dtype_enabled`);
without autocast (an fp32 run, a bf16 base with fp32 adapters) PEFT casts as it always does.

**The adapter's update added inside its GEMM.** PEFT's LoRA layer computes `result + lora_B(h) * scaling`:
three passes over the layer's whole output (B's product, the scale, the sum) and, backward, a fourth (the
scale again). `addmm(result, h, Bᵀ, alpha=scaling)` is one GEMM that reads `result` and writes the sum; its
backward scales only the rank-r products. The same sum, rounded once instead of three times under autocast.
The adapter's dropout scale joins that alpha too (`WordDropout.unscaled`): one pass less each way.
Measured on `%lora` MiniLM SST-2 bf16 (2,000 rows, 2 EPYC cores, three alternating pairs): 1–6 % more
tokens/s, 7 % less peak memory; `lora_vs_trainer_peft.py` 1.41× → 1.48× Trainer + PEFT with `bf16=True`. Only plain LoRA layers take it (one active adapter, not merged, no DoRA or other variant, no bias on
B, dtypes that agree or autocast on); any other call goes to PEFT's own forward.
"""
from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch import nn

from .attention import short_attention
from .dropout import WordDropout


@contextlib.contextmanager
def fast_paths(model: nn.Module, device: torch.device, autocast: torch.dtype | None) -> Iterator[None]:
    with cheap_dropout(model, device), short_attention(model, device), \
            adapter_input_casts_off(model, device, autocast is not None), lora_update_in_gemm(model):
        yield


class CastUnlessAutocast:
    """PEFT's `cast_input_dtype_enabled`, true only while autocast is off: under autocast the input stays in the
    dtype autocast computes in; outside it (TRL's generation runs outside its autocast) the input still goes to
    the adapter's dtype, or a bf16 activation would meet an fp32 weight."""

    def __init__(self, device_type: str):
        self.device_type = device_type

    def __bool__(self) -> bool:
        return not torch.is_autocast_enabled(self.device_type)


@contextlib.contextmanager
def adapter_input_casts_off(model: nn.Module, device: torch.device, active: bool) -> Iterator[None]:
    """PEFT's switch, off under autocast, on the layers that have it (peft.helpers.disable_input_dtype_casting
    sets it on every tuner layer, and fails on the kinds that have none, such as IA3's)."""
    layers = [m for m in model.modules() if getattr(m, "cast_input_dtype_enabled", None) is True] if active else []
    for layer in layers:
        layer.cast_input_dtype_enabled = CastUnlessAutocast(device.type)
    try:
        yield
    finally:
        for layer in layers:
            layer.cast_input_dtype_enabled = True


@contextlib.contextmanager
def cheap_dropout(model: nn.Module, device: torch.device) -> Iterator[int]:
    """Every plain `nn.Dropout` (p > 0) in `model` is a `WordDropout` inside the block on a CPU; yields
    how many were swapped. The originals come back at exit, so the model a Result keeps is unchanged."""
    swapped: list[tuple[nn.Module, str, nn.Dropout]] = []
    if device.type == "cpu":
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Dropout and child.p > 0:
                    faster = WordDropout(child.p, child.inplace)
                    faster.train(child.training)
                    setattr(parent, name, faster)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)


def _lora_linear_class():
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:      # PEFT is a dependency; a model without adapters needs none of this
        return None
    return Linear


def _forward_with_update_in_gemm(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's `lora.Linear.forward` for the plain case, the update added by the GEMM; otherwise PEFT's own."""
    peft_forward = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or self.lora_variant or len(self.active_adapters) != 1:
        return peft_forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A or self.lora_B[name].bias is not None:
        return peft_forward(self, x, *args, **kwargs)
    weight_b = self.lora_B[name].weight
    autocast = torch.is_autocast_enabled(x.device.type)
    base_weight = getattr(self.base_layer, "weight", None)
    same = {x.dtype, weight_b.dtype, self.lora_A[name].weight.dtype} == {getattr(base_weight, "dtype", x.dtype)}
    if not (autocast or same):
        return peft_forward(self, x, *args, **kwargs)       # PEFT's casts decide the dtypes there
    result = self.base_layer(x)
    dropout = self.lora_dropout[name]
    dropped, owed = dropout.unscaled(x) if isinstance(dropout, WordDropout) else (dropout(x), 1.0)
    h = self.lora_A[name](dropped)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), weight_b.t(),
                      alpha=self.scaling[name] * owed)
    return out.view(result.shape)


@contextlib.contextmanager
def lora_update_in_gemm(model: nn.Module) -> Iterator[int]:
    """Every PEFT `lora.Linear` in `model` adds its update inside one GEMM while the block runs; yields how many.
    The override is on the instance, so leaving the block gives each layer back PEFT's forward."""
    linear = _lora_linear_class()
    layers = [m for m in model.modules() if linear is not None and type(m) is linear]
    for layer in layers:
        layer.forward = types.MethodType(_forward_with_update_in_gemm, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward
