"""One declaration per option: parser, help, API keywords and validation agree."""
from dataclasses import dataclass

import pytest

from llm_magics import options as opts
from llm_magics.errors import UsageError
from llm_magics.options import option, positive


@dataclass
class Demo:
    name: str = option(positional=True, help="a name")
    epochs: int = option(3, "passes over the data", check=positive)
    lr: float = option(1e-3, "learning rate", check=positive)
    labels: list[str] = option([], "verbalizers")
    kind: str = option("a", "which kind", choices=("a", "b"))
    cache: bool = option(True, "reuse the cache")
    note: str | None = option(None, "free text")

    def validate(self):
        if self.kind == "b" and self.epochs > 5:
            raise UsageError("--kind b allows at most 5 epochs")


def test_line_parses_types_and_defaults():
    o = opts.parse_line(Demo, "run1 --epochs 5 --lr 0.01 --labels neg,pos --no-cache --note 'two words'", "demo")
    assert (o.name, o.epochs, o.lr, o.labels, o.cache, o.note, o.kind) == (
        "run1", 5, 0.01, ["neg", "pos"], False, "two words", "a")


def test_api_keywords_share_coercion_and_checks():
    o = opts.from_kwargs(Demo, {"name": "x", "labels": "a,b", "epochs": 2})
    assert o.labels == ["a", "b"] and o.epochs == 2
    with pytest.raises(UsageError, match="--epochs: must be > 0"):
        opts.from_kwargs(Demo, {"name": "x", "epochs": 0})


@pytest.mark.parametrize("line, message", [
    ("x --epoch 3", "unknown option --epoch; did you mean --epochs?"),
    ("x --epochs three", "--epochs expects an integer, got 'three'"),
    ("x --lr -1", "--lr: must be > 0"),
    ("x --kind c", "--kind 'c' is not valid"),
    ("x --kind b --epochs 9", "--kind b allows at most 5 epochs"),
    ("x y", "unexpected argument 'y'"),
    ("", "required"),
    ("x --note 'unclosed", "check the quotes"),
])
def test_bad_lines_give_one_usage_error(line, message):
    with pytest.raises(UsageError) as info:
        opts.parse_line(Demo, line, "demo")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_keyword_names_the_closest():
    with pytest.raises(UsageError, match="did you mean epochs"):
        opts.from_kwargs(Demo, {"name": "x", "epohcs": 1})


def test_help_lists_every_option_with_defaults_and_choices():
    text = opts.help_text(Demo, "demo", "Summary line.")
    for flag in ("--epochs", "--lr", "--labels", "--kind", "--cache/--no-cache", "--note", "NAME"):
        assert flag in text
    assert "(default: 3)" in text and "[a|b]" in text and "Summary line." in text


def test_signature_matches_the_declaration():
    sig = opts.signature(Demo)
    assert list(sig.parameters) == ["name", "epochs", "lr", "labels", "kind", "cache", "note"]
    assert sig.parameters["epochs"].default == 3
    assert sig.parameters["name"].default is sig.empty


def test_list_defaults_are_not_shared_between_instances():
    a = opts.from_kwargs(Demo, {"name": "a"})
    a.labels.append("z")
    assert opts.from_kwargs(Demo, {"name": "b"}).labels == []


# ---- numbers are finite and in the range their meaning allows ---------------

@dataclass
class Knobs:
    lr: float = option(1e-3, "learning rate", check=positive)
    clip: float = option(1.0, "clip norm", check=opts.non_negative)
    temperature: float = option(0.0, "0 is greedy")
    budget: float = option(10.0, "may be unlimited", finite=False,
                           check=lambda v: None if v > 0 else f"must be > 0, got {v}")  # NaN fails `v > 0`
    steps: int = option(3, "steps")
    seed: int = option(0, "a seed")
    head_dropout: float = option(0.1, "dropout before the head")
    share: float = option(0.5, "a probability", check=opts.probability)


@pytest.mark.parametrize("line, message", [
    ("--lr nan", "--lr: must be a finite number, got nan"),
    ("--lr inf", "--lr: must be a finite number, got inf"),
    ("--lr -inf", "--lr: must be a finite number, got -inf"),
    ("--lr=-1e-3", "--lr: must be > 0"),
    ("--lr -1e-3", "--lr: must be > 0"),             # a negative number is a value, not an option
    ("--lr 1e999", "--lr: must be a finite number"),
    ("--clip NaN", "--clip: must be a finite number"),
    ("--temperature Infinity", "--temperature: must be a finite number"),   # no check of its own
    ("--budget nan", "--budget: must be > 0"),
    ("--steps 1e3", "--steps expects an integer"),
    ("--steps 99999999999999999999", "out of range"),
    ("--seed -1", "--seed: is a seed: an integer from 0 to 4294967295"),
    ("--seed 4294967296", "--seed: is a seed"),
    ("--head-dropout 1", "--head-dropout: is a dropout probability: at least 0 and below 1"),
    ("--head-dropout -0.1", "--head-dropout: is a dropout probability"),
    ("--share 1.01", "--share: is a probability: from 0 to 1"),
    ("--share -0", None),
    ("--budget inf", None),                            # finite=False lets infinity through
    ("--seed 4294967295 --head-dropout 0 --share 1", None),
])
def test_numbers_must_be_finite_and_in_range(line, message):
    if message is None:
        opts.parse_line(Knobs, line, "knobs")
        return
    with pytest.raises(UsageError) as info:
        opts.parse_line(Knobs, line, "knobs")
    assert message in str(info.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": float("nan")}, "--lr: must be a finite number"),
    ({"steps": float("inf")}, "--steps expects an integer"),
    ({"steps": 2 ** 80}, "out of range"),
    ({"steps": True}, "--steps expects an integer, got True"),
    ({"lr": False}, "--lr expects a number, got False"),
    ({"seed": 2.0 ** 40}, "--seed: is a seed"),
])
def test_the_api_gets_the_same_number_checks(kwargs, message):
    with pytest.raises(UsageError) as info:
        opts.from_kwargs(Knobs, kwargs)
    assert message in str(info.value)


def test_checks_reject_nan_themselves_too():
    """A check called directly (a method's validate(), a plugin) must not let NaN compare its way through."""
    nan = float("nan")
    for check in (opts.positive, opts.non_negative, opts.fraction, opts.probability, opts.dropout_rate,
                  opts.between(0, 1), opts.finite):
        assert check(nan) is not None and check(float("inf")) is not None, check
    assert opts.between(0, 1, high_open=True)(1) and opts.between(0, 1, high_open=True)(0.5) is None
    assert opts.seed(True) and opts.seed(1.0) and opts.seed(7) is None
