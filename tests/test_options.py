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
