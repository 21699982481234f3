"""What trains: `--train head|last:N|all`, and a report of trainable parameters."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
from torch import nn

from ..errors import UsageError
from ..engine.features import num_layers

SPEC = re.compile(r"^(head|all|last:(\d+))$")


def check_spec(value: str) -> str | None:
    if not SPEC.match(str(value)):
        return f"expects head, last:N (the last N blocks plus the head) or all, got {value!r}"
    if str(value).startswith("last:") and int(value.split(":")[1]) < 1:
        return "last:N needs N ≥ 1"
    return None


@dataclass
class Plan:
    spec: str
    trainable: int
    total: int
    groups: pd.DataFrame       # group, params, trainable
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def line(self) -> str:
        return (f"{self.spec}: {self.trainable:,} of {self.total:,} parameters trainable "
                f"({100 * self.share:.3g}%)" + "".join(f"; {n}" for n in self.notes))

    def _repr_html_(self) -> str:
        return f"<b>{self.line()}</b>" + self.groups.to_html(index=False)

    def __repr__(self) -> str:
        return self.line() + "\n" + self.groups.to_string(index=False)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer's list of blocks: the ModuleList as long as the config's layer count."""
    wanted = num_layers(model.config)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == wanted:
            return name, module
    raise UsageError(f"cannot find the {wanted} transformer blocks of {type(model).__name__}; use --train head or all")


def head_module(model: nn.Module) -> nn.Module:
    """The output layer: our classifier's head, or a causal LM's lm_head."""
    if hasattr(model, "head") and isinstance(model.head, nn.Linear):
        return model.head
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None:
        raise UsageError(f"{type(model).__name__} has no output layer to train; use --train all")
    return out


# Outside the blocks, these are inputs (embeddings) or unused by our heads (BERT's pooler).
NOT_AFTER_BLOCKS = re.compile(r"embed|wte|wpe|pooler|position")


def selector(model: nn.Module, spec: str):
    """`--train spec` as a predicate (name, param) → trains."""
    # By identity, not name: a tied lm_head's weight is listed under the input embeddings.
    head_params = {id(p) for p in head_module(model).parameters()}
    blocks_path, keep = None, range(0)
    if spec.startswith("last:"):
        n = int(spec.split(":")[1])
        blocks_path, blocks = find_blocks(model)
        if n > len(blocks):
            raise UsageError(f"--train {spec}: this model has {len(blocks)} blocks; use last:1…"
                             f"last:{len(blocks)} or all")
        keep = range(len(blocks) - n, len(blocks))
    return lambda name, param: (spec == "all" or id(param) in head_params
                                or _in_last_blocks(name, blocks_path, keep))


def apply(model: nn.Module, spec: str) -> Plan:
    """Freeze everything but what `spec` trains; return the counts, by group."""
    take = selector(model, spec)
    for name, param in model.named_parameters():
        param.requires_grad = take(name, param)
    plan = report(model, f"--train {spec}")
    plan.notes += tie_note(model, spec)
    return plan


def tie_note(model: nn.Module, spec: str) -> list[str]:
    if spec != "all" and getattr(model.config, "tie_word_embeddings", False) and not hasattr(model, "head"):
        return ["the output layer is tied to the input embeddings: training it trains both"]
    return []


def _in_last_blocks(name: str, blocks_path: str | None, keep: range) -> bool:
    """In one of the kept blocks, or after the blocks (a final norm such as Llama's norm or GPT-2's ln_f)."""
    if blocks_path is None:
        return False
    prefix = blocks_path + "."
    if name.startswith(prefix):
        return int(name[len(prefix):].split(".", 1)[0]) in keep
    return not NOT_AFTER_BLOCKS.search(name)


def report(model: nn.Module, spec: str) -> Plan:
    """Parameters and trainable ones, by group; the blocks collapse into one row ("layers.*")."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        group = _group(name)
        entry = rows.setdefault(group, [0, 0])
        entry[0] += param.numel()
        entry[1] += param.numel() if param.requires_grad else 0
    total = sum(v[0] for v in rows.values())
    trainable = sum(v[1] for v in rows.values())
    groups = pd.DataFrame([{"group": g, "params": v[0], "trainable": v[1]} for g, v in rows.items()])
    return Plan(spec, trainable, total, groups)


def _group(name: str) -> str:
    """'base.encoder.layer.3.attention.self.query.weight' → 'base.encoder.layer.*'; others by module."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i] + ["*"])
    return ".".join(parts[:-1]) or name
