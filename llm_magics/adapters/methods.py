"""`--method` → a PEFT config: the entries of `kinds.KINDS`, built against the model.

Tuners (LoRA and its variants, IA3, LoHa, LoKr, OFT) inject trainable
modules into the model's linear layers; prompt-learning methods (prefix
tuning, P-tuning, prompt tuning) learn virtual tokens. Whether a method works
for a given model and task is checked by running it (see `smoke_test`), not
assumed from a table that would go stale.
"""
from __future__ import annotations

import torch
from torch import nn

from ..engine.limits import config_position_limit
from ..engine.rng import isolated
from ..errors import UsageError
from ..models.trainable import find_blocks
from .kinds import FEEDFORWARD, KINDS, AdapterSpec, Where  # noqa: F401

TUNERS = tuple(name for name, kind in KINDS.items() if not kind.prompt_learning)
PROMPT_LEARNING = tuple(name for name, kind in KINDS.items() if kind.prompt_learning)
METHODS = TUNERS + PROMPT_LEARNING


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


def build_config(spec: AdapterSpec, model: nn.Module, task_type, total_steps: int, tokenizer_path: str | None,
                 modules_to_save: list[str] | None = None):
    """The PEFT config for `spec.method`; `model` is what PEFT will wrap."""
    kind = KINDS.get(spec.method)
    if kind is None:  # the option's choices keep this unreachable from a magic
        raise UsageError(f"unknown --method {spec.method}; known: {', '.join(KINDS)}")
    if kind.prompt_learning:
        check_virtual_tokens(spec.virtual_tokens, config_position_limit(model.config))
    modules = [] if kind.prompt_learning else targets(model, list(spec.target))
    geometry = _geometry(model.config) if kind.prompt_learning else {}
    return kind.build(spec, Where(task_type, modules, geometry, total_steps, tokenizer_path, modules_to_save))


def check_virtual_tokens(count: int, context: int | None) -> None:
    """Virtual tokens sit in the model's context (`context` positions) beside the text: as many as the context
    holds is a mistake (and, at millions, an out-of-memory crash inside PEFT), so it is one line. Checked from
    the model folder's config before anything loads (LoraMethod.check), and again on the loaded config."""
    limit = (context // 2) if context else 4096
    if count > limit:
        where = f"half of the model's context of {context} positions" if context else "4096"
        raise UsageError(f"--virtual-tokens {count} is more than {where}, leaving no room for the text; "
                         "use a few to a few hundred (default 20)")


@isolated()   # its dropout draws from no run's generator (engine/rng.py)
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


PEFT_TYPES = {name: kind.peft_type for name, kind in KINDS.items()}


def name_clash(name: str, method: str) -> None:
    """PEFT finds an adapter's weights by '<prefix><name>': a name inside the prefix breaks loading."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(getattr(PeftType, PEFT_TYPES[method]))
    if prefix and name in prefix:
        raise UsageError(f"adapter name {name!r} is part of PEFT's parameter prefix {prefix!r} for {method}; "
                         "pick another name")
