"""Which `--method`s work: a method is tried (a forward and backward on a small padded batch), not
assumed to work from a table; and an adapter's name must not clash with PEFT's parameter prefix.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..engine.rng import isolated
from ..errors import UsageError
from ..tasks.causal_lm import SftTask
from ..tasks.classify import TokenTask
from .build import wrap_new
from .configs import METHODS, PEFT_TYPES, AdapterSpec


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


def name_clash(name: str, method: str) -> None:
    """PEFT finds an adapter's weights by '<prefix><name>': a name inside the prefix breaks loading."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(getattr(PeftType, PEFT_TYPES[method]))
    if prefix and name in prefix:
        raise UsageError(f"adapter name {name!r} is part of PEFT's parameter prefix {prefix!r} for {method}; "
                         "pick another name")


def working_methods(loaded, spec: AdapterSpec, data, source, max_length: int) -> list[str]:
    """Which methods do train this architecture for this task: each tried on a one-block replica."""
    from transformers import AutoModel, AutoModelForCausalLM
    config = copy.deepcopy(loaded.model.config)
    for attribute in ("num_hidden_layers", "n_layers", "n_layer", "num_layers"):
        if getattr(config, attribute, None):
            setattr(config, attribute, 1)
    sft = spec.task == "sft"
    auto = AutoModelForCausalLM if sft else AutoModel
    replica_task = (SftTask(data, loaded.tokenizer, max_length, torch.device("cpu"), notes=[]) if sft
                    else TokenTask(data, loaded.tokenizer, 32, torch.device("cpu")))
    batch = replica_task.batch(np.asarray(smoke_rows(replica_task.lengths)), torch.device("cpu"))
    works = []
    for method in METHODS:
        replica = type(loaded)(loaded.source, auto.from_config(config), loaded.tokenizer, loaded.head,
                               torch.device("cpu"), torch.float32)
        try:
            model, _ = wrap_new(replace(spec, method=method), replica, len(getattr(data, "label_names", None) or []),
                                "probe", 10, source)
        except (ValueError, TypeError, RuntimeError, NotImplementedError, UsageError):
            continue
        if smoke_test(model, batch) is None:
            works.append(method)
    return works
