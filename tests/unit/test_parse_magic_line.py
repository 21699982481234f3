"""One parser for a method's magic line: the magic, the tune form, a sweep (from a line or from Python) and the
worker's rebuild of the kernel's options all read the same line as the same run, or refuse it in the same line."""
from types import SimpleNamespace

import pytest

from llm_magics import options as opts
from llm_magics.errors import UsageError
from llm_magics.registry import asks_help, parse_magic_line, registry
from llm_magics.tune import form
from llm_magics.tune import sweep as sweep_mod

GOOD = [
    "%probe --data train_df --C 0.5 --no-standardize",
    '%probe --data train_df --text "my text" --layer -1',
    "%probe --data=train_df --classifier mlp --hidden 64,8",
    "%lora --data df --r 4 --target q_proj,v_proj --name my-adapter --no-trust-remote-code",
    '%lora save mine "/tmp/my adapters/one"',
    "%lora load /tmp/x --as other",
    "%rlhf dpo --data prefs --beta 0.2",
    "%rlhf",
    "%index build wiki --from docs --chunk 64",
    "%index query wiki 'what is it'",
    "%finetune --data df --lr 1e-4 --epochs 2",
    "%%icl --data df\nReview: {text}\nSentiment: {label}",
]

BAD = [
    ("%probe --modle minilm", "%probe: unknown option --modle; did you mean --model?"),
    ("%probe --C -1", "--C: must be > 0"),
    ('%probe --data "unclosed', "could not read the line: No closing quotation (check the quotes)"),
    ("%lora sav mine /tmp/x", "%lora: unknown command 'sav'; did you mean save? (commands: adapters, save,"),
    ("%lora save onlyname", "the following arguments are required: PATH"),
    ("%lora save a b c", "%lora save: unexpected argument 'c'"),
    ("%rlhf dpo --no-such 1", "%rlhf dpo: unknown option --no-such"),
    ("%rlhf dpp", "%rlhf: unknown command 'dpp'"),
    ("%%probe --data df\nbody", "%%probe takes no cell body; use the line magic %probe"),
    ("%%index build wiki\nbody", "%%index takes no cell body; use the line magic %index"),
    ("%%icl --data df --shots -2\nbody", "--shots: must be ≥ 0"),
    ("%index build bad/name", "--name: 'bad/name' is a path"),
]


@pytest.fixture
def runs(monkeypatch):
    """What the runner was asked to run, (method, command, options) per run: nothing is run."""
    calls = []

    class Handle:   # what a sweep reads of runner.RunHandle
        run_id = "fake"
        progress = SimpleNamespace(state=SimpleNamespace(history=[]))

        def result(self):
            return None

        def stop(self):
            pass

    def execute(name, word, options, **_):
        calls.append((name, word, options))
        return Handle()
    monkeypatch.setattr("llm_magics.runner.execute", execute)
    return calls


def by_the_magic(shell, runs, text):
    """(method, command, options) the magic runs, or the UsageError's line."""
    outcome = shell.run_cell(text)
    if outcome.error_in_exec is not None:
        assert isinstance(outcome.error_in_exec, UsageError), outcome.error_in_exec
        return str(outcome.error_in_exec)
    return runs.pop()


def by_the_form(text):
    try:
        return form.parse(text)
    except UsageError as exc:
        return str(exc)


def neutral_axis(options_cls, tokens):
    """A grid of one point that leaves the run as the line has it: an option the line does not set, at its default."""
    for spec in opts.specs(options_cls):
        text = form.default_text(spec)
        if (not spec.positional and spec.kind in (int, float) and text and spec.name not in form.HANDLED
                and spec.flag not in tokens and opts._coerce(spec, text) == spec.default):
            return f"{spec.name}={text}"
    raise AssertionError(f"{options_cls.__name__} has no option to sweep")


def by_a_sweep(runs, text):
    """(method, command, options) a sweep of the line runs, or the UsageError's line."""
    name, rest, cell = form.split_magic(text)
    try:
        tokens = opts.split_line(rest)
        cls = registry().load(name)
        word = tokens[0] if tokens and tokens[0] in cls.commands else None
        grid = neutral_axis(cls.command(word).options, tokens)
        sweep, _ = sweep_mod.from_line([name, *tokens, "--grid", grid], cell=cell)
    except UsageError as exc:
        return str(exc)
    sweep.start().wait(30)
    assert sweep.rows[0]["status"] == "ok", sweep.rows[0]
    return runs.pop()


def records_no_run(text):
    name, rest, _ = form.split_magic(text)
    words = rest.split()
    command = registry().load(name).commands.get(words[0]) if words else None
    return command is not None and not command.records_run


@pytest.mark.parametrize("text", GOOD)
def test_a_good_line_is_one_run_for_every_caller(shell, runs, text):
    name, rest, cell = form.split_magic(text)
    cls, word, options = parse_magic_line(name, rest, cell)
    expected = (name, word, options)
    assert by_the_magic(shell, runs, text) == expected
    assert by_the_form(text) == expected
    if records_no_run(text):   # a sweep runs only commands that record a run, and says so
        with pytest.raises(UsageError, match=f"%llm sweep: {name} {word} records no run"):
            sweep_mod.from_line([name, *opts.split_line(rest), "--grid", "x=1"])
    else:
        assert by_a_sweep(runs, text) == expected
    # A launched run's worker rebuilds the kernel's options from their record: the same options.
    assert opts.from_kwargs(cls.command(word).options, opts.as_dict(options)) == options


@pytest.mark.parametrize("text, message", BAD)
def test_a_bad_line_is_the_same_one_line_for_every_caller(shell, runs, text, message):
    name, rest, cell = form.split_magic(text)
    with pytest.raises(UsageError) as caught:
        parse_magic_line(name, rest, cell)
    line = str(caught.value)
    assert message in line and "\n" not in line
    assert by_the_magic(shell, runs, text) == line
    assert by_the_form(text) == line
    if not records_no_run(text):
        assert by_a_sweep(runs, text) == line
    assert runs == []


def test_the_python_sweep_runs_what_the_magic_runs(shell, runs):
    from llm_magics import api
    magic = by_the_magic(shell, runs, '%rlhf dpo --data prefs --beta 0.2 --no-trust-remote-code')
    api.sweep("rlhf", "beta=0.2", command="dpo", data="prefs", trust_remote_code=False, wait=True)
    assert runs.pop() == magic
    magic = by_the_magic(shell, runs, '%probe --data train_df --text "my text" --no-standardize')
    api.sweep("probe", "seed=0", data="train_df", text="my text", standardize=False, wait=True)
    assert runs.pop() == magic


def test_help_is_asked_anywhere_on_the_line_and_shown_by_the_magic(shell, runs, capsys):
    assert asks_help(["save", "-h"]) and asks_help(["--help"]) and not asks_help(["--helpful"])
    assert shell.run_cell("%lora save --help").error_in_exec is None and runs == []
    assert "%lora save NAME PATH [options]" in capsys.readouterr().out


def test_help_shows_positionals_in_the_order_the_parser_takes_them():
    from llm_magics.methods.lora import SaveOptions
    text = opts.help_text(SaveOptions, "lora save")
    assert text.splitlines()[0] == "%lora save NAME PATH [options]"
    assert text.index("  NAME  ") < text.index("  PATH  ")
    assert parse_magic_line("lora", "save mine /tmp/x").options == SaveOptions(name="mine", path="/tmp/x")
