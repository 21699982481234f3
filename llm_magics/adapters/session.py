"""Loading a saved adapter onto its base (`%lora load`) and merging one (`%lora merge`)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..engine.device import pick_dtype
from ..errors import UsageError
from ..models import resolve
from .build import base_model, check_bits, wrap_saved
from .hub import AdapterSet, hub, merged_copy, read_info, saved_head
from .methods import name_clash


def load_adapter(path: str, name: str | None, model: str | None, pick_device) -> str:
    """A folder written by `%lora save`, onto its base: shared with adapters already on that
    base, or a fresh base. `pick_device()` gives the device when a base must load. Returns its name."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(f"{path}: no such folder; pass a folder written by %lora save")
    info = read_info(folder)
    if model:
        asked = resolve(model)
        if asked.fingerprint != info.model_fingerprint.split("@")[0] and asked.name != info.model:
            raise UsageError(f"the adapter in {path} was trained on {info.model}, not {model}; "
                             f"an adapter only fits the base it was trained on (drop --model or pass {info.model})")
    info.name = name or info.name
    info.origin = str(folder)
    hub().check_free(info.name)
    name_clash(info.name, info.method)
    existing = hub().compatible(info)
    if existing is not None:
        existing.load(folder, info)
        return info.name
    device = pick_device()
    check_bits(info.bits, device)
    source = resolve(info.model)
    loaded = base_model(source, info.task, device, pick_dtype(device, info.dtype), info.bits)
    if loaded.fingerprint.split("@")[0] != info.model_fingerprint.split("@")[0]:
        raise UsageError(f"{info.model} now resolves to different weights than the adapter was trained on; "
                         "load the same base model")
    model_, peft = wrap_saved(loaded, info, folder)
    adapter_set = AdapterSet(model_, peft, loaded.tokenizer, info.key, {info.name: info})
    head = saved_head(folder, info)
    if head is not None:
        adapter_set.heads[info.name] = head
    adapter_set.activate(info.name)
    hub().sets.append(adapter_set)
    return info.name


def merged_model(name: str) -> nn.Module:
    """A plain model with the adapter merged in (a quantized base is dequantised first)."""
    adapter_set, info = hub().find(name)
    if not info.bits:
        return merged_copy(adapter_set, name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = adapter_set.save(name, Path(tmp))
        device = next(adapter_set.model.parameters()).device
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        loaded = base_model(resolve(info.model), info.task, device, dtype)
        model, peft = wrap_saved(loaded, info, folder)
        return merged_copy(AdapterSet(model, peft, loaded.tokenizer, info.key, {name: info}), name)
