"""The form of a method, read from its Options declaration (no widgets here).

Every option a method declares becomes one field: `choices` a dropdown, a
bool a checkbox, an int or float a numeric field checked as it is typed by
the option's own check, a data option a list of the notebook's tables, a
column option a list of the chosen data's columns, anything else text. The
fields are grouped (data, model, training, method) and the rarely used ones
folded. From the values a user entered comes the exact magic line the form
stands for (`magic_line`), and from that line — parsed as the magic parses
it — the options a run gets (`parse`): a panel run and the typed line are
one and the same run.
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from typing import Any

from .. import common_options as common
from .. import options as opts
from ..errors import UsageError
from ..registry import parse_magic_line

GROUPS = ("data", "model", "training", "method")
GROUP_TITLES = {"data": "Data", "model": "Model", "training": "Training", "method": "Method options"}
DATA_NAMES = {"data", "validation", "test", "demos", "source"}
# Shown under "more" in their group: what most runs leave alone.
RARE = {"device", "dtype", "trust_remote_code", "val_size", "test_size", "max_grad_norm", "weight_decay",
        "warmup", "scheduler", "grad_accum", "eval_every", "patience", "max_length", "resume", "batch_tokens",
        "cache", "max_iter", "head_dropout",
        # Scaling past one process: --devices N and the multi-node settings.
        "devices", "strategy", "nodes", "node_rank", "master_addr", "master_port", "rendezvous_timeout"}
# Options the panel handles itself: it always runs in the background, and binds the Result by name.
HANDLED = {"bg", "out"}


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


MODEL_NAMES = _names(common.ModelOptions)
TRAINING_NAMES = _names(common.TrainingOptions)
DATA_OPTION_NAMES = _names(common.DataOptions)


@dataclass(frozen=True)
class Field:
    spec: opts.Spec
    group: str      # data | model | training | method
    role: str       # data | column | model | choice | bool | int | float | list | text
    folded: bool

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def default_text(self) -> str:
        """The default as the form shows it ('' for none)."""
        return default_text(self.spec)


def default_text(spec: opts.Spec) -> str:
    if spec.required or spec.default is None:
        return ""
    if spec.kind is bool:
        return str(bool(spec.default))
    if isinstance(spec.default, (list, tuple)):
        return ",".join(map(str, spec.default))
    return str(spec.default)


def _role(spec: opts.Spec) -> str:
    if spec.metavar == "DATA" or (spec.kind is object and spec.name in DATA_NAMES):
        return "data"
    if spec.metavar == "COLUMN":
        return "column"
    if spec.name == "model":
        return "model"
    if spec.choices and spec.kind is not list:
        return "choice"
    if spec.kind in (bool, int, float, list):
        return spec.kind.__name__
    return "text"


def _group(spec: opts.Spec, role: str) -> str:
    if role in ("data", "column") or spec.name in DATA_OPTION_NAMES:
        return "data"
    if spec.name in MODEL_NAMES:
        return "model"
    if spec.name in TRAINING_NAMES:
        return "training"
    return "method"


def _rank(spec: opts.Spec) -> tuple[int, int]:
    """Where an option goes in the form and the line: by group, then (in the data group) the data
    itself before its columns and the rest; declaration order otherwise."""
    role = _role(spec)
    return GROUPS.index(_group(spec, role)), {"data": 0, "column": 1}.get(role, 2)


def fields(options_cls) -> list[Field]:
    """The form's fields: grouped (data, model, training, method), in declaration order within each."""
    out = []
    for spec in sorted(opts.specs(options_cls), key=_rank):
        if spec.name in HANDLED:
            continue
        role = _role(spec)
        out.append(Field(spec, _group(spec, role), role, spec.name in RARE))
    return out


SHORT_HELP = 90   # characters of help shown under a field; the whole help is on hover


def short_help(spec: opts.Spec) -> str:
    """The help's first clause, short enough for a line under the field (its first sentence or up to ';')."""
    text = spec.help.split("; ")[0].split(". ")[0].strip()
    if len(text) <= SHORT_HELP:
        return text
    cut = text[:SHORT_HELP].rsplit(" ", 1)[0]
    return cut.rstrip(",:(") + " …"


def applying(options_cls, values: dict[str, Any]) -> set[str]:
    """The options that apply to these form values (the others' conditions, declared with `applies`, fail)."""
    all_specs = opts.specs(options_cls)
    return {s.name for s in all_specs if opts.applies(s, values, all_specs)}


def check(spec: opts.Spec, text: Any) -> str | None:
    """The option's own check of one value as typed: the UsageError's message, or None."""
    if isinstance(text, str):
        text = text.strip()
        if text == "":
            return f"{spec.flag} is required" if spec.required else None
    try:
        value = opts._coerce(spec, text)
        opts._validate_value(spec, value)
    except UsageError as exc:
        return str(exc)
    return None


# ---- the magic line ---------------------------------------------------------------

def flag_tokens(spec: opts.Spec, value: Any) -> list[str]:
    """What the line says for one value ([] when it is the default)."""
    if spec.kind is bool:
        value = value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
        if value == bool(spec.default):
            return []
        return [spec.flag if value else "--no-" + spec.flag[2:]]
    text = "" if value is None else (",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    text = text.strip()
    if text == "" or (not spec.required and text == default_text(spec)):
        return []
    return [text] if spec.positional else [spec.flag, text]


def line_tokens(options_cls, values: dict[str, Any]) -> list[str]:
    """Positional values first (declared order), then each option that differs from its default."""
    specs = [s for s in opts.specs(options_cls)]
    tokens: list[str] = []
    for spec in specs:
        if spec.positional and spec.name in values:
            tokens += flag_tokens(spec, values[spec.name])
    for spec in sorted(specs, key=lambda s: (s.name == "out", _rank(s))):   # as the form shows them; --out last
        if not spec.positional and spec.name in values:
            tokens += flag_tokens(spec, values[spec.name])
    return tokens


def join(tokens: list[str]) -> str:
    return " ".join(shlex.quote(t) for t in tokens)


def magic_line(method: str, word: str | None, options_cls, values: dict[str, Any],
               cell: str | None = None) -> str:
    """The exact magic a user can type for these form values (`%%` and the body for cell magics)."""
    head = f"{'%%' if cell is not None else '%'}{method}" + (f" {word}" if word else "")
    rest = join(line_tokens(options_cls, values))
    line = f"{head} {rest}".rstrip()
    return line + ("\n" + cell if cell is not None else "")


def split_magic(text: str) -> tuple[str, str, str | None]:
    """'%name rest' or '%%name rest\\nbody' → (name, rest, body or None). The body as IPython hands it to a
    cell magic, ending in a newline: the panel's run and the same cell typed record one template."""
    first, _, body = text.lstrip("\n").partition("\n")
    if first.startswith("%%"):
        name, _, rest = first[2:].partition(" ")
        return name, rest, body if body.endswith("\n") else body + "\n"
    if first.startswith("%"):
        name, _, rest = first[1:].partition(" ")
        return name, rest, None
    raise UsageError(f"not a magic line: {first!r}")


def parse(line: str, registry=None):
    """Parse a magic line with the magic's own parser: (name, command word, options)."""
    name, rest, cell = split_magic(line)
    _, word, options = parse_magic_line(name, rest, cell, registry)
    return name, word, options


def values_from_record(options_cls, recorded: dict[str, Any]) -> dict[str, Any]:
    """Form values from a recorded run's options (objects recorded as '<DataFrame>' are left out)."""
    out = {}
    for spec in opts.specs(options_cls):
        if spec.name not in recorded or spec.name == "bg":
            continue
        value = recorded[spec.name]
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            continue
        if spec.kind is bool:
            out[spec.name] = bool(value)
        elif value is None:
            out[spec.name] = ""
        elif isinstance(value, list):
            out[spec.name] = ",".join(map(str, value))
        else:
            out[spec.name] = str(value)
    return out
