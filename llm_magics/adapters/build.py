"""Building adapted models: a fresh (optionally quantized) base, wrapped with a new or a
saved adapter, for classification (our pooled classifier) or a causal LM."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..models import load_model
from ..models.classifier import SequenceClassifier
from ..engine.features import default_pooling
from ..engine.rng import seeded
from ..tasks.causal_lm import require_decoder
from .configs import PROMPT_LEARNING, AdapterSpec, build_config
from .folder import AdapterInfo


def check_bits(bits: int | None, device: torch.device) -> None:
    if not bits:
        return
    if device.type != "cuda":
        raise UsageError(f"--bits {bits} quantizes the base with bitsandbytes, which needs a CUDA GPU; this run is "
                         f"on {device.type}: drop --bits")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError(f"--bits {bits} needs bitsandbytes: pip install bitsandbytes") from None


def base_model(source, task: str, device, dtype, bits: int | None = None, trust_remote_code: bool = False):
    """A fresh base (adapters change it in place), quantized when asked."""
    kwargs: dict[str, Any] = {}
    if bits:
        from transformers import BitsAndBytesConfig
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                               bnb_4bit_use_double_quant=True) if bits == 4 else BitsAndBytesConfig(load_in_8bit=True))
    loaded = load_model(source, "causal_lm" if task == "sft" else "base", device, dtype, fresh=True,
                        trust_remote_code=trust_remote_code, **kwargs)
    if task == "sft":
        require_decoder(loaded, source)
    if bits:
        from peft import prepare_model_for_kbit_training
        loaded.model = prepare_model_for_kbit_training(loaded.model)
    for param in loaded.model.parameters():
        param.requires_grad = False
    return loaded


def wrap_new(spec: AdapterSpec, loaded, labels: int, name: str, total_steps: int, source):
    """(the model to call, the PeftModel) with a fresh adapter `name`; `labels`: classes (classify)."""
    with seeded(spec.seed):  # the adapter's and the head's initial weights: --seed's alone (engine/rng.py)
        return _wrap_new(spec, loaded, labels, name, total_steps, source)


def _wrap_new(spec: AdapterSpec, loaded, labels: int, name: str, total_steps: int, source):
    from peft import TaskType, get_peft_model
    path = source.path
    if spec.task == "sft":
        config = build_config(spec, loaded.model, TaskType.CAUSAL_LM, total_steps, path)
        peft = get_peft_model(loaded.model, config, adapter_name=name)
        return peft, peft
    pooling = default_pooling(loaded.kind) if spec.pooling == "auto" else spec.pooling
    if spec.method in PROMPT_LEARNING:
        config = build_config(spec, loaded.model, TaskType.FEATURE_EXTRACTION, total_steps, path)
        peft = get_peft_model(loaded.model, config, adapter_name=name)
        model = SequenceClassifier(peft, labels, pooling, spec.head_dropout).to(loaded.device)
        model.head.float()
        return model, peft
    model = SequenceClassifier(loaded.model, labels, pooling, spec.head_dropout).to(loaded.device)
    model.head.float()
    # The head trains with the adapter and is saved in it (PEFT's modules_to_save).
    config = build_config(spec, model, None, total_steps, path, modules_to_save=["head"])
    peft = get_peft_model(model, config, adapter_name=name)
    return peft, peft


def wrap_saved(loaded, info: AdapterInfo, folder: Path):
    from peft import PeftModel
    if info.task == "sft":
        peft = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=info.name)
        return peft, peft
    labels = len(info.label_names or [])
    if info.method in PROMPT_LEARNING:
        peft = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=info.name)
        model = SequenceClassifier(peft, labels, info.pooling, info.head_dropout).to(loaded.device)
        model.head.float()
        return model.eval(), peft
    model = SequenceClassifier(loaded.model, labels, info.pooling, info.head_dropout).to(loaded.device)
    model.head.float()
    peft = PeftModel.from_pretrained(model, str(folder), adapter_name=info.name)
    return peft.eval(), peft
