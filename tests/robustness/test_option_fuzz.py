"""Property-based fuzz of the option parser and checks (llm_magics/options.py).

Whatever a user types on a magic's line, or passes as keyword arguments to the
Python API, `parse_line` / `from_kwargs` either return the options dataclass or
raise UsageError (one line). Any other exception is a bug. The options of every
registered method and subcommand are fuzzed (plugins and new methods included:
they are found through the registry), plus `%llm runs` / `%llm compare`.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_magics import options as opts
from llm_magics.errors import UsageError
from llm_magics.magics import CompareOptions, RunsOptions
from llm_magics.registry import registry


def option_classes() -> list[tuple[str, type]]:
    out = [("llm compare", CompareOptions), ("llm runs", RunsOptions)]
    for name in registry().names():
        cls = registry().load(name)
        out.append((name, cls.Options))
        out += [(f"{name} {word}", command.options) for word, command in cls.commands.items()]
    return out


CLASSES = option_classes()
IDS = [prog for prog, _ in CLASSES]

NUMBERS = ["0", "1", "-1", "2.5", "-0.5", "1e-3", "-1e-3", "1e999", "-1e999", "nan", "-nan", "inf", "-inf",
           "Infinity", "NaN", "4294967296", "99999999999999999999999", "0x10", "1_000", "3.0", "1e3", "",
           "true", "no"]
WORDS = ["minilm", "df", "x", "a,b", ",", "all", "last:2", "last:-1", "'quoted words'", '"', "'", "\\",
         "=", "--", "-", "-k", "--=", "a b", "é", "\x00", "{text}", "bad name!", "/no/such", "1x"]


def tokens_for(cls) -> st.SearchStrategy[list[str]]:
    specs = opts.specs(cls)
    flags = [s.flag for s in specs if not s.positional] + [s.short for s in specs if s.short]
    flags += ["--no-" + s.flag[2:] for s in specs if s.kind is bool]
    flags += ["--nosuch", "--", "-"]
    value = st.sampled_from(NUMBERS + WORDS) | st.text(max_size=8)
    flag_eq = st.builds(lambda f, v: f"{f}={v}", st.sampled_from(flags), value)
    token = st.sampled_from(flags) | value | flag_eq
    return st.lists(token, max_size=8)


def python_values() -> st.SearchStrategy:
    scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=10) | st.sampled_from(NUMBERS + WORDS))
    return (scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
            | st.tuples(scalars) | st.just(object()) | st.just(float("nan")) | st.just(2 ** 70))


def kwargs_for(cls) -> st.SearchStrategy[dict]:
    names = [s.name for s in opts.specs(cls)] + ["nosuch"]
    return st.dictionaries(st.sampled_from(names), python_values(), max_size=5)


def only_options_or_usage_error(call, cls):
    try:
        result = call()
    except UsageError as error:
        message = str(error)
        assert message and "\n" not in message.strip(), repr(message)
        return None
    assert isinstance(result, cls)
    return result


FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize("prog, cls", CLASSES, ids=IDS)
def test_parse_line_returns_options_or_raises_usage_error(prog, cls):
    @FUZZ
    @given(tokens_for(cls))
    def check(tokens):
        parsed = only_options_or_usage_error(lambda: opts.parse_line(cls, tokens, prog), cls)
        if parsed is not None:
            assert_values_are_sane(parsed)

    check()


@pytest.mark.parametrize("prog, cls", CLASSES, ids=IDS)
def test_from_kwargs_returns_options_or_raises_usage_error(prog, cls):
    @FUZZ
    @given(kwargs_for(cls))
    def check(kwargs):
        parsed = only_options_or_usage_error(lambda: opts.from_kwargs(cls, kwargs), cls)
        if parsed is not None:
            assert_values_are_sane(parsed)

    check()


def assert_values_are_sane(parsed) -> None:
    """What got through is what the option means: finite numbers, seeds and dropouts in range."""
    for spec in opts.specs(type(parsed)):
        value = getattr(parsed, spec.name)
        if value is None:
            continue
        if spec.kind is float:
            assert isinstance(value, float) and (math.isfinite(value) or not spec.finite), (spec.flag, value)
        if spec.kind is int:
            assert isinstance(value, int) and not isinstance(value, bool), (spec.flag, value)
            assert abs(value) <= opts.INT64_MAX
        implied = opts.by_meaning(spec)
        if implied:
            assert implied(value) is None, (spec.flag, value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "-1e999", "NaN", "Infinity"])
def test_every_float_option_of_every_method_refuses_non_finite_values(text):
    """Declared anywhere (a built-in, a plugin, a new method), a float option is finite unless it says not."""
    checked = 0
    for prog, cls in CLASSES:
        for spec in opts.specs(cls):
            if spec.kind is not float or spec.positional or not spec.finite:
                continue
            with pytest.raises(UsageError, match="finite"):
                opts.build(cls, {**required_values(cls), spec.name: text})
            checked += 1
    assert checked >= 20


def required_values(cls) -> dict:
    return {s.name: "x" for s in opts.specs(cls) if s.required}


@pytest.mark.parametrize("value, ok", [(-1, False), (0, True), (2 ** 32 - 1, True), (2 ** 32, False)])
def test_every_seed_option_is_a_numpy_seed(value, ok):
    import numpy as np
    seeds = [(cls, spec) for _, cls in CLASSES for spec in opts.specs(cls) if opts.by_meaning(spec) is opts.seed]
    assert seeds, "no seed option found"
    for cls, spec in seeds:
        if ok:
            opts._validate_value(spec, value)  # the cross-option validate() is not what is tested here
            np.random.default_rng(value), np.random.RandomState(value)  # numpy takes it
        else:
            with pytest.raises(UsageError, match="is a seed"):
                opts.build(cls, {**required_values(cls), spec.name: value})


@pytest.mark.parametrize("value, ok", [(-0.1, False), (0.0, True), (0.99, True), (1.0, False), (2.0, False)])
def test_every_dropout_option_is_below_one(value, ok):
    dropouts = [(cls, spec) for _, cls in CLASSES for spec in opts.specs(cls)
                if opts.by_meaning(spec) is opts.dropout_rate]
    assert len(dropouts) >= 2, "expected --dropout (lora) and --head-dropout (finetune) at least"
    for cls, spec in dropouts:
        if ok:
            opts._validate_value(spec, value)
        else:
            with pytest.raises(UsageError, match="dropout probability"):
                opts.build(cls, {**required_values(cls), spec.name: value})


def test_every_option_class_is_a_dataclass_the_fuzz_can_reach():
    assert len(CLASSES) >= 15
    for _, cls in CLASSES:
        assert dataclasses.is_dataclass(cls)
