"""`--method` → a PEFT config, one entry per method, built from the options.

Tuners (LoRA and its variants, IA3, LoHa, LoKr, OFT) inject trainable
modules into the model's linear layers; prompt-learning methods (prefix
tuning, P-tuning, prompt tuning) learn virtual tokens. Whether a method works
for a given model and task is checked by running it (see `smoke_test`), not
assumed from a table that would go stale.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..models.trainable import find_blocks

TUNERS = ("lora", "rslora", "dora", "adalora", "ia3", "loha", "lokr", "oft")
PROMPT_LEARNING = ("prefix", "ptuning", "prompt")
METHODS = TUNERS + PROMPT_LEARNING
# MLP output projections: IA3 scales their inputs rather than their outputs.
FEEDFORWARD = re.compile(r"(down_proj|fc2|dense_4h_to_h|mlp\.c_proj|w2|(?<!attention\.)output\.dense)$")


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear-like layers inside the transformer blocks (never the embeddings, pooler or heads)."""
    from transformers.pytorch_utils import Conv1D
    path, _ = find_blocks(model)
    return {name: module for name, module in model.named_modules()
            if name.startswith(path + ".") and isinstance(module, (nn.Linear, Conv1D))}


def targets(model: nn.Module, requested: list[str]) -> list[str]:
    """`all-linear` → every linear layer in the blocks; else check each name exists (as a suffix)."""
    layers = linear_layers(model)
    if not requested or requested == ["all-linear"]:
        return sorted(layers)
    leaves = sorted({name.rsplit(".", 1)[-1] for name in layers})
    for wanted in requested:
        if not any(name == wanted or name.endswith("." + wanted) for name in layers):
            raise UsageError(f"--target {wanted}: the model has no such linear layer; its layers are "
                             f"{', '.join(leaves)} (or all-linear)")
    return [name for name in sorted(layers) if any(name == w or name.endswith("." + w) for w in requested)]


def _geometry(config) -> dict[str, int]:
    """What prompt learning needs to know about the model, for configs PEFT can't read itself."""
    text = getattr(config, "text_config", None) or config
    pick = lambda *names: next((getattr(text, n) for n in names if getattr(text, n, None)), None)  # noqa: E731
    return {"token_dim": pick("hidden_size", "dim", "d_model", "n_embd"),
            "num_layers": pick("num_hidden_layers", "n_layers", "n_layer", "num_layers"),
            "num_attention_heads": pick("num_attention_heads", "n_heads", "n_head")}


def build_config(method: str, o, model: nn.Module, task_type, total_steps: int, tokenizer_path: str | None,
                 modules_to_save: list[str] | None = None):
    """The PEFT config for `method`; `model` is what PEFT will wrap."""
    import peft
    alpha = o.alpha if o.alpha is not None else 2 * o.r
    if method in PROMPT_LEARNING:
        geometry = _geometry(model.config)
        common: dict[str, Any] = dict(task_type=task_type, num_virtual_tokens=o.virtual_tokens, **geometry)
        if method == "prefix":
            return peft.PrefixTuningConfig(**common)
        if method == "ptuning":
            return peft.PromptEncoderConfig(encoder_hidden_size=o.encoder_hidden, **common)
        if o.init_text:
            return peft.PromptTuningConfig(prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                           prompt_tuning_init_text=o.init_text,
                                           tokenizer_name_or_path=tokenizer_path, **common)
        return peft.PromptTuningConfig(**common)
    names = targets(model, o.target)
    shared: dict[str, Any] = dict(task_type=task_type, target_modules=names, modules_to_save=modules_to_save)
    if method in ("lora", "rslora", "dora"):
        return peft.LoraConfig(r=o.r, lora_alpha=alpha, lora_dropout=o.dropout, use_rslora=method == "rslora",
                               use_dora=method == "dora", **shared)
    if method == "adalora":
        # Ranks start at r and are pruned to target_r between 10% and 80% of training.
        return peft.AdaLoraConfig(init_r=o.r, target_r=o.target_r or max(1, o.r // 2), lora_alpha=alpha,
                                  lora_dropout=o.dropout, total_step=max(total_steps, 1),
                                  tinit=int(0.1 * total_steps), tfinal=int(0.2 * total_steps),
                                  deltaT=max(1, total_steps // 20), **shared)
    if method == "ia3":
        feedforward = [n for n in names if FEEDFORWARD.search(n)]
        return peft.IA3Config(feedforward_modules=feedforward, **shared)
    if method == "loha":
        return peft.LoHaConfig(r=o.r, alpha=alpha, module_dropout=o.dropout, **shared)
    if method == "lokr":
        return peft.LoKrConfig(r=o.r, alpha=alpha, module_dropout=o.dropout, **shared)
    if method == "oft":
        return peft.OFTConfig(r=0, oft_block_size=o.block_size, module_dropout=o.dropout, **shared)
    raise UsageError(f"unknown --method {method}")  # the option's choices keep this unreachable


def smoke_test(model: nn.Module, batch: dict[str, torch.Tensor]) -> str | None:
    """A forward and backward in train mode and a forward in eval mode, on a small padded batch:
    None when the method trains and predicts, else why not."""
    from ..engine.device import eval_mode
    try:
        model.train()
        model(**batch).loss.backward()
        reached = any(p.grad is not None for p in model.parameters() if p.requires_grad)
        with torch.no_grad(), eval_mode(model):
            model(**batch)
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, IndexError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    finally:
        model.zero_grad(set_to_none=True)
    return None if reached else "no gradient reaches the adapter: the model ignores what the method adds"


def smoke_rows(lengths: list[int]) -> list[int]:
    """Two rows of different lengths among the first ones, so the smoke test pads."""
    head = list(range(min(len(lengths), 64)))
    shortest, longest = min(head, key=lengths.__getitem__), max(head, key=lengths.__getitem__)
    return [shortest, longest] if shortest != longest else head[:2]


PEFT_TYPES = {"lora": "LORA", "rslora": "LORA", "dora": "LORA", "adalora": "ADALORA", "ia3": "IA3",
              "loha": "LOHA", "lokr": "LOKR", "oft": "OFT", "prefix": "PREFIX_TUNING", "ptuning": "P_TUNING",
              "prompt": "PROMPT_TUNING"}


def name_clash(name: str, method: str) -> None:
    """PEFT finds an adapter's weights by '<prefix><name>': a name inside the prefix breaks loading."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(getattr(PeftType, PEFT_TYPES[method]))
    if prefix and name in prefix:
        raise UsageError(f"adapter name {name!r} is part of PEFT's parameter prefix {prefix!r} for {method}; "
                         "pick another name")
