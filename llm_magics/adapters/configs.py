"""Which PEFT config each `--method` means: one entry each in `KINDS`, built against the model by
`build_config`. Adding a PEFT method is one entry.

An entry holds the method's label, its PEFT type, the config builder (from an
`AdapterSpec` and what the model offers), its default learning rates, and
the options that must match for `--resume`. Tuners (LoRA and its variants, IA3,
LoHa, LoKr, OFT) inject trainable modules into the model's linear layers;
prompt-learning methods (prefix tuning, P-tuning, prompt tuning) learn virtual
tokens. Whether a method works for a given model and task is checked by
running it (`checks.smoke_test`), not assumed from a table that would go stale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Callable

from torch import nn

from ..engine.limits import config_position_limit
from ..errors import UsageError
from ..models.trainable import find_blocks

# MLP output projections: IA3 scales their inputs rather than their outputs.
FEEDFORWARD = re.compile(r"(down_proj|fc2|dense_4h_to_h|mlp\.c_proj|w2|(?<!attention\.)output\.dense)$")


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is built from: the narrow part of `%lora`'s options `adapters/` reads."""
    method: str = "lora"
    task: str = "classify"                 # classify | sft
    r: int = 8
    alpha: float | None = None             # default 2 × r
    dropout: float = 0.05
    target: tuple[str, ...] = ("all-linear",)
    target_r: int | None = None
    block_size: int = 32
    virtual_tokens: int = 20
    encoder_hidden: int = 128
    init_text: str | None = None
    pooling: str = "auto"                  # classify: the classifier's pooling and head
    head_dropout: float = 0.1
    seed: int = 0

    @classmethod
    def from_options(cls, o) -> "AdapterSpec":
        values = {f.name: getattr(o, f.name) for f in fields(cls) if hasattr(o, f.name)}
        if "target" in values:
            values["target"] = tuple(values["target"] or ("all-linear",))
        return cls(**values)

    @property
    def kind(self) -> "PeftKind":
        return KINDS[self.method]

    @property
    def scale(self) -> float:
        return self.alpha if self.alpha is not None else 2 * self.r


@dataclass(frozen=True)
class Where:
    """What a config builder gets to know about the model it adapts."""
    task_type: Any                         # peft.TaskType or None
    modules: list[str]                     # tuners: the linear layers to adapt
    geometry: dict[str, int]               # prompt learning: token_dim, num_layers, num_attention_heads
    total_steps: int
    tokenizer_path: str | None = None
    modules_to_save: list[str] | None = None

    @property
    def shared(self) -> dict[str, Any]:
        return dict(task_type=self.task_type, target_modules=self.modules, modules_to_save=self.modules_to_save)

    @property
    def virtual(self) -> dict[str, Any]:
        return dict(task_type=self.task_type, **self.geometry)


@dataclass(frozen=True)
class PeftKind:
    label: str
    peft_type: str                         # peft.PeftType member name
    build: Callable[[AdapterSpec, Where], Any]
    lr: float                              # default peak learning rate (classification)
    sft_lr: float | None = None            # for --task sft, when it differs
    resume_keys: tuple[str, ...] = ()      # this method's options that must match for --resume
    prompt_learning: bool = False

    def default_lr(self, task: str) -> float:
        return self.sft_lr if task == "sft" and self.sft_lr is not None else self.lr

    def describe(self, spec: AdapterSpec) -> str:
        return f"{spec.method} {spec.virtual_tokens} virtual tokens" if self.prompt_learning \
            else f"{spec.method} r={spec.r}"


def _lora(s: AdapterSpec, w: Where):
    import peft
    return peft.LoraConfig(r=s.r, lora_alpha=s.scale, lora_dropout=s.dropout, use_rslora=s.method == "rslora",
                           use_dora=s.method == "dora", **w.shared)


def _adalora(s: AdapterSpec, w: Where):
    import peft
    steps = w.total_steps
    # Ranks start at r and are pruned to target_r between 10% and 20% of training.
    return peft.AdaLoraConfig(init_r=s.r, target_r=s.target_r or max(1, s.r // 2), lora_alpha=s.scale,
                              lora_dropout=s.dropout, total_step=max(steps, 1), tinit=int(0.1 * steps),
                              tfinal=int(0.2 * steps), deltaT=max(1, steps // 20), **w.shared)


def _ia3(s: AdapterSpec, w: Where):
    import peft
    return peft.IA3Config(feedforward_modules=[n for n in w.modules if FEEDFORWARD.search(n)], **w.shared)


def _loha(s: AdapterSpec, w: Where):
    import peft
    return peft.LoHaConfig(r=s.r, alpha=s.scale, module_dropout=s.dropout, **w.shared)


def _lokr(s: AdapterSpec, w: Where):
    import peft
    return peft.LoKrConfig(r=s.r, alpha=s.scale, module_dropout=s.dropout, **w.shared)


def _oft(s: AdapterSpec, w: Where):
    import peft
    return peft.OFTConfig(r=0, oft_block_size=s.block_size, module_dropout=s.dropout, **w.shared)


def _prefix(s: AdapterSpec, w: Where):
    import peft
    return peft.PrefixTuningConfig(num_virtual_tokens=s.virtual_tokens, **w.virtual)


def _ptuning(s: AdapterSpec, w: Where):
    import peft
    return peft.PromptEncoderConfig(num_virtual_tokens=s.virtual_tokens, encoder_hidden_size=s.encoder_hidden,
                                    **w.virtual)


def _prompt(s: AdapterSpec, w: Where):
    import peft
    if s.init_text:
        return peft.PromptTuningConfig(num_virtual_tokens=s.virtual_tokens,
                                       prompt_tuning_init=peft.PromptTuningInit.TEXT,
                                       prompt_tuning_init_text=s.init_text, tokenizer_name_or_path=w.tokenizer_path,
                                       **w.virtual)
    return peft.PromptTuningConfig(num_virtual_tokens=s.virtual_tokens, **w.virtual)


# Peak learning rates when the user sets none (measured on SST-2 and small SFT sets): IA3 only
# rescales, virtual tokens start far from useful, a causal LM's responses need gentler steps.
_RANKED = ("r", "alpha", "dropout", "target")
KINDS: dict[str, PeftKind] = {
    "lora": PeftKind("LoRA", "LORA", _lora, 2e-3, 5e-4, _RANKED),
    "rslora": PeftKind("rank-stabilised LoRA", "LORA", _lora, 2e-3, 5e-4, _RANKED),
    "dora": PeftKind("DoRA (weight-decomposed LoRA)", "LORA", _lora, 2e-3, 5e-4, _RANKED),
    "adalora": PeftKind("AdaLoRA (adaptive ranks)", "ADALORA", _adalora, 2e-3, 5e-4, _RANKED + ("target_r",)),
    "ia3": PeftKind("IA3 (learned rescaling)", "IA3", _ia3, 5e-3, None, ("target",)),
    "loha": PeftKind("LoHa (Hadamard product)", "LOHA", _loha, 2e-3, 5e-4, _RANKED),
    "lokr": PeftKind("LoKr (Kronecker product)", "LOKR", _lokr, 2e-3, 5e-4, _RANKED),
    "oft": PeftKind("OFT (orthogonal fine-tuning)", "OFT", _oft, 2e-3, 5e-4, ("block_size", "dropout", "target")),
    "prefix": PeftKind("prefix tuning", "PREFIX_TUNING", _prefix, 2e-2, None, ("virtual_tokens",), True),
    "ptuning": PeftKind("P-tuning", "P_TUNING", _ptuning, 2e-2, None, ("virtual_tokens", "encoder_hidden"), True),
    "prompt": PeftKind("prompt tuning", "PROMPT_TUNING", _prompt, 2e-2, None, ("virtual_tokens", "init_text"), True),
}

TUNERS = tuple(name for name, kind in KINDS.items() if not kind.prompt_learning)
PROMPT_LEARNING = tuple(name for name, kind in KINDS.items() if kind.prompt_learning)
METHODS = TUNERS + PROMPT_LEARNING
PEFT_TYPES = {name: kind.peft_type for name, kind in KINDS.items()}


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
