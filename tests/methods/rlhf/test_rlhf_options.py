"""Each %rlhf command declares only what its run reads: a training-loop option it would ignore is refused by the
parser in one line; every class's own validate() runs along the options' class chain."""
from dataclasses import dataclass

import pytest

from llm_magics import options as opts
from llm_magics.errors import UsageError
from llm_magics.options import option


@pytest.mark.parametrize("command, flag", [
    (command, flag) for command in ("dpo", "kto", "orpo") for flag in ("--patience 3",
                                                                       "--eval-every 10", "--dropout 0.1")
] + [
    (command, flag) for command in ("grpo", "rloo") for flag in ("--patience 3", "--eval-every 10",
                                                                 "--epochs 2", "--max-length 64", "--strategy ddp")
] + [
    ("ppo", flag) for flag in ("--resume last", "--patience 3", "--eval-every 10", "--epochs 2", "--grad-accum 2",
                               "--warmup 0.1", "--scheduler cosine", "--weight-decay 0.1", "--max-length 64")
])
def test_an_option_the_run_would_ignore_is_refused_in_one_line(shell, store, command, flag):
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("rlhf", f"{command} {flag}")
    message = str(caught.value)
    assert message.startswith(f"%rlhf {command}: unknown option {flag.split()[0]}") and "\n" not in message
    assert store.list() == []


def test_what_the_reward_loop_honours_stays():
    from llm_magics.methods.rlhf.options import RewardOptions
    o = opts.parse_line(RewardOptions, "--data x --eval-every 10 --patience 3 --devices 2", "rlhf reward")
    assert (o.eval_every, o.patience, o.devices) == (10, 3, 2)


@dataclass
class _Bundle:
    low: int = option(0, "a bound")

    def validate(self) -> None:
        if self.low < 0:
            raise UsageError("--low must be at least 0")


@dataclass
class _Composed(_Bundle):
    high: int = option(1, "another bound")

    def validate(self) -> None:
        if self.high < self.low:
            raise UsageError("--high must be at least --low")


def test_validate_runs_along_the_class_chain():
    with pytest.raises(UsageError, match="^--low must be at least 0$"):
        opts.from_kwargs(_Composed, {"low": -1, "high": 5})   # the bundle's check, though _Composed has its own
    with pytest.raises(UsageError, match="^--high must be at least --low$"):
        opts.from_kwargs(_Composed, {"low": 3, "high": 2})


def test_lora_keeps_the_task_bundles_check():
    from llm_magics.methods.lora import LoraOptions
    with pytest.raises(UsageError, match="--prompt/--response/--messages are for --task sft"):
        opts.from_kwargs(LoraOptions, {"task": "classify", "prompt": "q"})
