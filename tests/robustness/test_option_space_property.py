"""A property over the `%rlhf` and `%llm sweep` option spaces: whatever line a user types — options drawn from
each command's declared options, values from valid, boundary and invalid ranges, odd strings — the line gives
a clean Result or exactly one UsageError line, never a traceback of another type, and a refused line leaves no
file behind in the home.

Most examples stop at the parser and the checks (`parse_magic_line`, the sweep's `from_line`: where a line is
refused before anything runs); a bounded few run on tiny models.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from tests.helpers import word_task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_magics import options as opts
from llm_magics.errors import UsageError
from llm_magics.method import Result
from llm_magics.registry import parse_magic_line, registry
from llm_magics.testing import isolated_home


@contextlib.contextmanager
def scratch_home(prefix: str):
    """An isolated home in a fresh temporary folder, removed afterwards (one per generated example)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        home = Path(folder)
        with isolated_home(home):
            yield home


NUMBERS = ["0", "1", "2", "-1", "0.5", "1e-9", "-0.0", "1e30", "2147483648", "99999999999999999999", "nan", "inf",
           "-inf", "1_0", "0x10", "3.0", "1e999", ""]
ODD = ["", " ", "../x", "a.b", "x" * 300, "é", "{text}", "-", "--", "'", '"', "\\", "a b", "last", "df", "pairs",
       "all-linear", "q_proj,v_proj", ",", "full", "lora", "head", "/tmp", "~", "$HOME", "1x"]


def value_for(spec: opts.Spec) -> st.SearchStrategy[str]:
    """Values as a user types them: the option's own (choices, in-range numbers), its edges, and nonsense."""
    if spec.choices:
        own = st.sampled_from([str(c) for c in spec.choices])
    elif spec.kind is int:
        own = st.integers(-3, 40).map(str)
    elif spec.kind is float:
        own = st.floats(-2, 10, allow_nan=False).map(lambda x: f"{x:.3g}")
    else:
        own = st.sampled_from(ODD)
    return own | st.sampled_from(NUMBERS + ODD) | st.text(max_size=6)


def tokens_for(options_cls, extra_flags: tuple = ()) -> st.SearchStrategy[list[str]]:
    specs = [s for s in opts.specs(options_cls) if not s.positional]
    positional = [s for s in opts.specs(options_cls) if s.positional]

    def one(spec: opts.Spec) -> st.SearchStrategy[list[str]]:
        if spec.kind is bool:
            return st.sampled_from([[spec.flag], ["--no-" + spec.flag[2:]]])
        return st.builds(lambda v, eq: [f"{spec.flag}={v}"] if eq else [spec.flag, v], value_for(spec), st.booleans())
    option = st.sampled_from(specs).flatmap(one) if specs else st.just([])
    odd = st.sampled_from([["--nosuch"], ["--"], ["-"], ["stray"], list(extra_flags)[:1] or ["-k"]])
    head = st.lists(st.sampled_from(ODD), min_size=len(positional), max_size=len(positional))
    return st.builds(lambda h, rest: h + [t for part in rest for t in part], head,
                     st.lists(st.one_of(option, option, option, odd), max_size=5))   # mostly declared options


RLHF = registry().load("rlhf")
WORDS = list(RLHF.commands)


def rlhf_line() -> st.SearchStrategy[list[str]]:
    """A %rlhf line: a command (or none, or a misspelt one) and tokens from that command's options."""
    def for_word(word):
        options = RLHF.command(word if word in RLHF.commands else None).options
        return tokens_for(options).map(lambda rest: ([word] if word else []) + rest)
    return st.sampled_from(WORDS + [None, "dpoo"]).flatmap(for_word)


def one_line(error: UsageError) -> None:
    message = str(error)
    assert message.strip() and "\n" not in message.strip(), repr(message)


def files_in(home: Path) -> set[Path]:
    return {p for p in home.rglob("*") if p.is_file()} if home.exists() else set()


FAST = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@FAST
@given(rlhf_line())
def test_every_rlhf_line_parses_or_is_one_usage_error(tokens):
    with scratch_home("rlhf-line-") as home:
        try:
            parse_magic_line("rlhf", tokens)
        except UsageError as error:
            one_line(error)
        assert not files_in(home), files_in(home)


SWEPT = ["lr", "lr", "r", "epochs", "batch_size", "beta", "steps", "seed", "max_length", "train", "method", "kl",
         "temperature", "num_generations", "devices", "out", "bg", "nosuch", "--lr", "", "lr-"]
GRID_VALUES = ["1e-4", "5e-4", "1e-3", "1", "2", "8", "0", "-1", "nan", "a", "1~10", "10~1", "~", "1e-5~1e-2", "lora",
               "full|head", "x" * 40, ""]


def grid() -> st.SearchStrategy[str]:
    item = st.builds(lambda name, values, sep: f"{name}={sep.join(values)}", st.sampled_from(SWEPT),
                     st.lists(st.sampled_from(GRID_VALUES), min_size=1, max_size=3), st.sampled_from([",", "|"]))
    odd = st.sampled_from(["", "lr", "=", "lr=", "'"])
    return st.lists(st.one_of(item, item, item, odd), min_size=0, max_size=3).map(" ".join)


def fuzzy_sweep_line() -> st.SearchStrategy[list[str]]:
    """`%llm sweep METHOD <a %rlhf line> --grid SPEC <the sweep's options>`, every part fuzzed."""
    from llm_magics.tune.sweep import SweepOptions
    return st.builds(lambda method, rlhf, spec, sweep: [method] + rlhf + ["--grid", spec] + sweep,
                     st.sampled_from(["rlhf"] * 6 + ["probe", "nosuch"]), rlhf_line(), grid(),
                     tokens_for(SweepOptions))


SWEEP_OWN = [["--random", "2"], ["--random", "1000000000000"], ["--max-points", "1"], ["--max-points", "100001"],
             ["--metric", "test_accuracy"], ["--metric", "nosuch"], ["--sweep-seed", "3"], ["--search", "tpe"],
             ["--search", "tpe", "--trials", "2"], ["--prune"], ["--out", "s"], ["--out", "1x"]]


def plausible_sweep_line() -> st.SearchStrategy[list[str]]:
    """A sweep over a recording %rlhf command's own options, with their values from every range."""
    words = [w for w, c in RLHF.commands.items() if c.records_run]

    def for_word(word):
        specs = [s for s in opts.specs(RLHF.command(word).options) if not s.positional]

        def axis(spec):
            return st.lists(value_for(spec).filter(lambda v: v.strip() and "," not in v and "|" not in v),
                            min_size=1, max_size=3).map(lambda vs: f"{spec.name}={','.join(vs)}")
        axes = st.lists(st.sampled_from(specs).flatmap(axis), min_size=1, max_size=2).map(" ".join)
        own = st.lists(st.sampled_from(SWEEP_OWN), max_size=2).map(lambda parts: [t for p in parts for t in p])
        return st.builds(lambda spec, rest: ["rlhf", word, "--grid", spec] + rest, axes, own)
    return st.sampled_from(words).flatmap(for_word)


def sweep_line() -> st.SearchStrategy[list[str]]:
    return st.one_of(plausible_sweep_line(), plausible_sweep_line(), fuzzy_sweep_line())


@FAST
@given(sweep_line())
def test_every_sweep_line_builds_or_is_one_usage_error(tokens):
    from llm_magics.tune.sweep import from_line
    with scratch_home("sweep-line-") as home:
        try:
            from_line(tokens, {})   # built, never started
        except UsageError as error:
            one_line(error)
        assert not files_in(home), files_in(home)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and the machine is shared."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- a few lines that run ---------------------------------------------------------------------------------

def pairs() -> pd.DataFrame:
    _, pos, neg = word_task(40, 0)
    return pd.DataFrame([{"prompt": "Review:", "chosen": f" {pos[i % len(pos)]} {pos[(i + 1) % len(pos)]}",
                          "rejected": f" {neg[i % len(neg)]} {neg[(i + 2) % len(neg)]}"} for i in range(16)])


def count_a(prompts, completions):
    return [float(c.count("a")) for c in completions]


# Each command's smallest run; the generated options are typed after these (the last value wins).
RUNNABLE = {
    "reward": "--model {bert} --data pairs --epochs 1 --batch-size 4 --max-length 12",
    "dpo": "--policy {llama} --data pairs --steps 1 --batch-size 4 --max-length 12",
    "grpo": "--policy {llama} --reward count_a --prompts prompts --steps 1 --batch-size 4 --num-generations 2 "
            "--max-new-tokens 3",
    "ppo": "--policy {llama} --reward count_a --prompts prompts --steps 1 --batch-size 4 --minibatch-size 2 "
           "--ppo-epochs 1 --max-new-tokens 3",
}
# Options that would make a tiny run long or wide: the generated value is replaced by a small one.
SMALL = {"--epochs", "--steps", "--batch-size", "--max-length", "--max-new-tokens", "--ppo-epochs", "--devices",
         "--nodes", "--num-generations", "--minibatch-size", "--grad-accum", "--k", "--samples", "--max-rows",
         "--eval-every", "--kl-horizon", "--bg"}


def run_line() -> st.SearchStrategy[tuple[str, list[str]]]:
    def for_word(word):
        options = RLHF.command(word).options
        specs = [s for s in opts.specs(options) if not s.positional and s.flag not in SMALL
                 and s.name not in ("policy", "model", "data", "reward", "prompts")]

        def one(spec):
            if spec.kind is bool:
                return st.sampled_from([[spec.flag], ["--no-" + spec.flag[2:]]])
            return value_for(spec).map(lambda v: [spec.flag, v])
        return st.lists(st.sampled_from(specs).flatmap(one), max_size=2).map(
            lambda parts: (word, [t for part in parts for t in part]))
    return st.sampled_from(list(RUNNABLE)).flatmap(for_word)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(line=run_line())
def test_lines_that_run_give_a_result_or_one_usage_error_and_leave_nothing_when_refused(line, tiny_bert, tiny_llama):
    import shlex

    from llm_magics.runner import execute
    word, extra = line
    base = shlex.split(RUNNABLE[word].format(bert=tiny_bert, llama=tiny_llama))
    namespace = {"pairs": pairs(), "count_a": count_a, "prompts": ["Review:", "Say:"]}
    with scratch_home("rlhf-run-") as home:
        before = files_in(home)
        try:
            parsed = parse_magic_line("rlhf", [word] + base + extra)
            result = execute("rlhf", word, parsed.options, namespace, method_cls=parsed.method)
        except UsageError as error:
            one_line(error)
            assert files_in(home) == before, files_in(home) - before
            return
        assert isinstance(result, Result) and result.status == "ok", result
    if getattr(result, "adapter", None):
        from llm_magics import api
        api.lora.unload(name=result.adapter)


@pytest.mark.parametrize("word", list(RUNNABLE))
def test_each_runnable_base_line_runs(word, tiny_bert, tiny_llama):
    """The property's base lines are runs, so a generated line that is refused is refused for what it adds."""
    import shlex

    from llm_magics.runner import execute
    parsed = parse_magic_line("rlhf", [word] + shlex.split(RUNNABLE[word].format(bert=tiny_bert, llama=tiny_llama)))
    namespace = {"pairs": pairs(), "count_a": count_a, "prompts": ["Review:", "Say:"]}
    assert isinstance(execute("rlhf", word, parsed.options, namespace, method_cls=parsed.method), Result)
