"""Options are declared once per method, as a dataclass.

    @dataclass
    class ProbeOptions:
        model: str = option("minilm", "model alias, local path or hub id")
        layer: str = option("-1", "layer index (negative from the top) or 'all'",
                            check=layer_spec)

From that one declaration come the magic's argument parser (`parse_line`),
the `%probe?` help (`help_text`), the Python API's keyword arguments
(`from_kwargs`, `signature`) and the validation both of them share.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import shlex
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from typing import Any

from .errors import UsageError, did_you_mean
from .records import as_dict as as_dict   # options as a run record keeps them

Check = Callable[[Any], "str | None"]


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    short: str | None = None,
    choices: tuple | list | None = None,
    check: Check | None = None,
    metavar: str | None = None,
    positional: bool = False,
    finite: bool = True,
    applies: "Applies | None" = None,
) -> Any:
    """Declare one option: default, help text and how to check it.

    `check(value)` returns an error message (what is wrong and what would be
    right) or None. `flag` overrides the default `--name-with-dashes`.
    Every number is checked before `check` runs: a float must be finite (no
    NaN, no ±inf) unless `finite=False`, an integer must fit in 64 bits, and
    a name implies a range (`seed`: 0 … 2**32-1, `dropout`: [0, 1); see
    `by_meaning`). `applies` says when the option means something (`when("classifier", "mlp")`): the
    `?` help says so and the tuning form hides it otherwise.
    """
    meta = dict(help=help, flag=flag, short=short, choices=choices, check=check,
                metavar=metavar, positional=positional, finite=finite, applies=applies)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---- checks shared by many methods -------------------------------------------------
# Each returns what is wrong (and what would be right) or None. NaN compares
# false with everything, so every check tests what a value must be, never
# what it must not be: `not value > 0`, not `value <= 0`.

INT64_MAX = 2 ** 63 - 1
SEED_MAX = 2 ** 32 - 1   # numpy's RandomState and sklearn's random_state accept 0 … 2**32-1


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def finite(value) -> str | None:
    if value is None:
        return None
    if not _number(value) or not math.isfinite(value):
        return f"must be a finite number, got {_shown(value)}"
    return None


def positive(value) -> str | None:
    if value is None:
        return None
    if finite(value) or not value > 0:
        return f"must be > 0 (and finite), got {_shown(value)}"
    return None


def non_negative(value) -> str | None:
    if value is None:
        return None
    if finite(value) or not value >= 0:
        return f"must be ≥ 0 (and finite), got {_shown(value)}"
    return None


def fraction(value) -> str | None:
    """Strictly between 0 and 1 (a share of rows held out)."""
    if value is None:
        return None
    if finite(value) or not 0 < value < 1:
        return f"must be between 0 and 1 (exclusive), got {_shown(value)}"
    return None


def probability(value) -> str | None:
    """0 … 1, both ends included."""
    if value is None:
        return None
    if finite(value) or not 0 <= value <= 1:
        return f"is a probability: from 0 to 1, got {_shown(value)}"
    return None


def dropout_rate(value) -> str | None:
    """0 (no dropout) … below 1 (1 would drop everything)."""
    if value is None:
        return None
    if finite(value) or not 0 <= value < 1:
        return f"is a dropout probability: at least 0 and below 1, got {_shown(value)}"
    return None


def seed(value) -> str | None:
    """numpy, sklearn and torch all accept 0 … 2**32-1."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= SEED_MAX:
        return f"is a seed: an integer from 0 to {SEED_MAX}, got {_shown(value)}"
    return None


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A check for a finite number in a range, e.g. `between(0, 1, high_open=True)`."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def check(value) -> str | None:
        if value is None:
            return None
        ok = (finite(value) is None
              and (value > low if low_open else value >= low)
              and (value < high if high_open else value <= high))
        return None if ok else f"must be in {left}{low}, {high}{right}, got {_shown(value)}"
    return bounded(check, f"in {left}{low}, {high}{right}")


def at_most(high: int, *, also: str | None = None) -> Check:
    """A count from 1 to `high`: a ceiling a typo (1e9 tokens, 10**12 points) cannot pass. `also` names a
    limit known only later (the model's context), checked where it is known. The bound shows in the
    option's help, hence in the magic's help and the tuning form."""
    def check(value) -> str | None:
        if value is None:
            return None
        problem = positive(value)
        if problem or value <= high:
            return problem
        return f"must be at most {high}, got {_shown(value)}"
    return bounded(check, f"1 … {high}" + (f", and {also}" if also else ""))


def bounded(check: Check, bound: str) -> Check:
    """`check`, with the bound it enforces written out for the help (`at most the model's positions`)."""
    def described(value) -> str | None:
        return check(value)
    described.bound = bound
    return described


# Tokens one generation may add: above the contexts of the models people tune here (a typo's 10**9 stops at
# the parser); the model's own context is checked once it loads (engine/limits.py check_generation).
MAX_NEW_TOKENS = 32768
new_tokens = at_most(MAX_NEW_TOKENS, also="below the model's context")


def _help(meta) -> str:
    bound = getattr(meta.get("check"), "bound", None)
    return meta.get("help", "") + (f" ({bound})" if bound else "")


# ---- when an option applies --------------------------------------------------------

@dataclass(frozen=True)
class Applies:
    """An option means something only while another option (`option`) has one of `values`, or is above
    `above`: `--hidden` only with `--classifier mlp`, `--node-rank` only with `--nodes` above 1."""
    option: str
    values: tuple = ()
    above: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.option.replace("_", "-")

    def holds(self, value: Any) -> bool:
        """Whether it applies while the other option is `value` (as typed or as parsed)."""
        if self.above is not None:
            try:
                return float(value) > self.above
            except (TypeError, ValueError):
                return False
        return str(value) in {str(v) for v in self.values}

    def describe(self) -> str:
        """'only with --classifier mlp', 'only with --method prefix, ptuning or prompt', 'only with --nodes > 1'."""
        if self.above is not None:
            return f"only with {self.flag} > {self.above:g}"
        names = [str(v) for v in self.values]
        shown = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        return f"only with {self.flag} {shown}"


def when(option: str, *values: Any, above: float | None = None) -> Applies:
    """`option(..., applies=when("classifier", "mlp"))`, `when("nodes", above=1)`."""
    if bool(values) == (above is not None):
        raise ValueError("when(): give the values the option applies under, or above=N, not both")
    return Applies(option, tuple(values), above)


def applies(spec: "Spec", values: dict[str, Any], all_specs: list["Spec"]) -> bool:
    """Whether `spec` applies, given the other options' `values` (a missing one: its default). An option
    whose condition names an option this class does not have always applies."""
    condition = spec.applies
    if condition is None:
        return True
    other = next((s for s in all_specs if s.name == condition.option), None)
    if other is None:
        return True
    value = values.get(other.name)
    if value is None or (isinstance(value, str) and not value.strip()):
        value = other.default
    return condition.holds(value)


# ---- the declaration, read back --------------------------------------------------

@dataclass(frozen=True)
class Spec:
    name: str
    kind: Any            # bool, int, float, str, list, or object (anything: data, models)
    default: Any
    required: bool
    help: str
    flag: str
    short: str | None
    choices: tuple | None
    check: Check | None
    metavar: str | None
    positional: bool
    finite: bool = True
    applies: Applies | None = None

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.default is None or self.kind is bool:
            return ""
        if isinstance(self.default, list):
            return ",".join(map(str, self.default))
        return str(self.default)


def _kind(annotation) -> Any:
    """Collapse an annotation to the kind we parse: `int | None` → int."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _kind(args[0])
        return object
    if origin in (list, tuple) or annotation in (list, tuple):
        return list
    if annotation in (bool, int, float, str):
        return annotation
    return object


def specs(options_cls) -> list[Spec]:
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        meta = f.metadata
        if f.default is not MISSING:
            default, required = f.default, False
        elif f.default_factory is not MISSING:
            default, required = f.default_factory(), False
        else:
            default, required = None, True
        out.append(Spec(
            name=f.name, kind=_kind(hints[f.name]), default=default, required=required,
            help=_help(meta), flag=meta.get("flag") or "--" + f.name.replace("_", "-"),
            short=meta.get("short"), choices=tuple(meta["choices"]) if meta.get("choices") else None,
            check=meta.get("check"), metavar=meta.get("metavar"),
            positional=meta.get("positional", False), finite=meta.get("finite", True),
            applies=meta.get("applies"),
        ))
    return out


# ---- values: one coercion for the parser and the API -----------------------------------

def _coerce(spec: Spec, value: Any) -> Any:
    """Turn a value (a string from the line, or anything from Python) into the option's kind."""
    if value is None or spec.kind is object:
        return value
    if spec.kind in (int, float) and isinstance(value, bool):  # True is 1 to Python, not to a user
        raise UsageError(f"{spec.flag} expects {'an integer' if spec.kind is int else 'a number'}, got {value!r}")
    try:
        if spec.kind is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            return bool(value)
        if spec.kind is list:
            if isinstance(value, str):
                return [v.strip() for v in value.split(",") if v.strip()]
            return list(value)
        if spec.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if spec.kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):
        kind = {int: "an integer", float: "a number", bool: "true or false",
                list: "a comma-separated list"}.get(spec.kind, spec.kind.__name__)
        raise UsageError(f"{spec.flag} expects {kind}, got {value!r}") from None


def by_meaning(spec: Spec) -> Check | None:
    """The range an option's name implies, checked beside its own check: every method's
    `seed` / `*_seed` is a numpy seed, every `dropout` / `*_dropout` a dropout probability."""
    name = spec.name.lower()
    if spec.kind is int and (name == "seed" or name.endswith("_seed")):
        return seed
    if spec.kind is float and (name == "dropout" or name.endswith("_dropout")):
        return dropout_rate
    return None


def _validate_value(spec: Spec, value: Any) -> None:
    if value is None:
        return
    if spec.kind is float and spec.finite and not math.isfinite(value):
        raise UsageError(f"{spec.flag}: must be a finite number, got {value}")
    if spec.kind is int and not -INT64_MAX <= value <= INT64_MAX:
        raise UsageError(f"{spec.flag}: {value} is out of range (at most {INT64_MAX} in size)")
    implied = by_meaning(spec)
    if implied and implied is not spec.check:
        problem = implied(value)
        if problem:
            raise UsageError(f"{spec.flag}: {problem}")
    if spec.choices:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in spec.choices:
                raise UsageError(f"{spec.flag} {item!r} is not valid"
                                 + did_you_mean(str(item), map(str, spec.choices)))
    if spec.check:
        problem = spec.check(value)
        if problem:
            raise UsageError(f"{spec.flag}: {problem}")


def build(options_cls, values: dict[str, Any]):
    """Coerce, check each option, then the class's cross-option `validate()`."""
    by_name = {s.name: s for s in specs(options_cls)}
    kwargs = {}
    for name, value in values.items():
        spec = by_name[name]
        value = _coerce(spec, value)
        _validate_value(spec, value)
        kwargs[name] = value
    missing = [s.flag for s in by_name.values() if s.required and s.name not in kwargs]
    if missing:
        raise UsageError(f"missing required option {', '.join(missing)}")
    opts = options_cls(**kwargs)
    # Defaults are checked too: a default can be invalid for this model or task.
    validate_chain(opts)
    return opts


def validate_chain(opts) -> None:
    """Each class's own cross-option `validate()`, along the whole class chain (MRO order): a bundle's
    checks run whether or not the options class composing it declares its own."""
    for cls in type(opts).__mro__:
        validate = cls.__dict__.get("validate")
        if validate is not None:
            validate(opts)


def from_kwargs(options_cls, kwargs: dict[str, Any]):
    """The Python API's entry: keyword arguments named as the options."""
    valid = {s.name for s in specs(options_cls)}
    for key in kwargs:
        if key not in valid:
            raise UsageError(f"unknown argument {key!r}" + did_you_mean(key, valid))
    return build(options_cls, kwargs)


# ---- the magic's line -----------------------------------------------------------

# argparse takes `-1e-3`, `-inf` and `-nan` for options (it knows `-1` and `-.5` only): a value that
# reads as a number is a value, so `--lr -1e-3` is refused by the check, not as a missing argument.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER

    def error(self, message):  # argparse would print and exit the kernel
        raise UsageError(message)

    def exit(self, status=0, message=None):
        raise UsageError(message or "invalid arguments")


def _parser(options_cls, prog: str) -> tuple[_Parser, list[Spec]]:
    parser = _Parser(prog=prog, add_help=False, allow_abbrev=False)
    all_specs = specs(options_cls)
    for spec in all_specs:
        if spec.positional:
            parser.add_argument(spec.name, nargs=None if spec.required else "?",
                                default=argparse.SUPPRESS, metavar=spec.metavar or spec.name.upper())
            continue
        names = [spec.flag] + ([spec.short] if spec.short else [])
        if spec.kind is bool:
            parser.add_argument(*names, dest=spec.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS)
        else:
            parser.add_argument(*names, dest=spec.name, default=argparse.SUPPRESS)
    return parser, all_specs


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"could not read the line: {exc} (check the quotes)") from None


def parse_line(options_cls, line: str | list[str], prog: str, extra: dict[str, Any] | None = None):
    """Parse a magic's line into the options dataclass; UsageError on any mistake.

    `extra` holds values that do not come from the line (a cell magic's body).
    """
    tokens = split_line(line) if isinstance(line, str) else list(line)
    parser, all_specs = _parser(options_cls, prog)
    namespace, extras = parser.parse_known_args(tokens)
    if extras:
        flags = [s.flag for s in all_specs if not s.positional]
        flags += ["--no-" + s.flag[2:] for s in all_specs if s.kind is bool]
        bad = next((t for t in extras if t.startswith("-")), extras[0])
        if bad.startswith("-"):
            raise UsageError(f"%{prog}: unknown option {bad.split('=')[0]}"
                             + did_you_mean(bad.split("=")[0], flags))
        raise UsageError(f"%{prog}: unexpected argument {bad!r}")
    return build(options_cls, {**vars(namespace), **(extra or {})})


def help_text(options_cls, prog: str, summary: str = "", usage: str | None = None) -> str:
    """The `%name?` text: usage, summary, then one line per option: positionals in the order the parser
    takes them (`%lora save NAME PATH`), then the class's own options, then its bundles'."""
    own = options_cls.__dict__.get("__annotations__", {})
    all_specs = sorted(specs(options_cls), key=lambda s: (0,) if s.positional else (1, s.name not in own))
    positionals = " ".join(s.metavar or s.name.upper() for s in all_specs if s.positional)
    lines = [usage or f"%{prog} {positionals} [options]".replace("  ", " "), ""]
    if summary:
        lines += [summary.strip(), ""]
    if not all_specs:
        return "\n".join(lines + ["(no options)"])
    lines.append("Options:")
    rows = []
    for s in all_specs:
        if s.positional:
            left = s.metavar or s.name.upper()
        elif s.kind is bool:
            left = f"{s.flag}/--no-{s.flag[2:]}"
        else:
            left = f"{s.flag} {s.metavar or _metavar(s)}"
        rows.append((left, describe(s)))
    width = min(max(len(left) for left, _ in rows) + 2, 32)
    for left, right in rows:
        pad = " " * max(width - len(left), 2)
        lines.append(f"  {left}{pad}{right}")
    return "\n".join(lines)


def describe(spec: Spec) -> str:
    """One option's whole help, as `?` and the tuning form show it: help, choices, default, when it applies."""
    text = spec.help
    if spec.choices:
        text += f" [{'|'.join(map(str, spec.choices))}]"
    default = spec.describe_default()
    if default:
        text += f" (default: {default})"
    if spec.applies:
        text += f" ({spec.applies.describe()})"
    return text


def _metavar(spec: Spec) -> str:
    return {int: "N", float: "X", list: "A,B,..."}.get(spec.kind, "VALUE")


def signature(options_cls) -> inspect.Signature:
    """The API function's signature: keyword-only arguments named as the options."""
    params = []
    for s in specs(options_cls):
        default = inspect.Parameter.empty if s.required else s.default
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params)
