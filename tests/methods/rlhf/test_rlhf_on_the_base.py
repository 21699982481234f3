"""Every %rlhf trainer is a TrainingMethod: the base decides device, dtype, the model, the live view, describe,
Stop, hold and the end; a command's module only overrides hooks (it writes none of those steps again)."""
from __future__ import annotations

from pathlib import Path

import pytest

import llm_magics

RLHF = Path(llm_magics.__file__).parent / "methods" / "rlhf"
# Steps the base owns, as a module would write them again by hand.
BASE_STEPS = ("ctx.device(", "ctx.progress(", "train_dtype(", "describe_run(", "close_run(", "progress.end(",
              "hold(result)")


@pytest.mark.parametrize("module", ["reward.py", "offline.py", "online.py", "ppo.py"])
def test_a_trainers_module_writes_none_of_the_bases_steps(module):
    text = (RLHF / module).read_text()
    assert [step for step in BASE_STEPS if step in text] == []


def test_every_training_command_runs_a_training_method():
    from llm_magics.methods.rlhf.offline import OfflineTraining
    from llm_magics.methods.rlhf.online import OnlineTraining
    from llm_magics.methods.rlhf.ppo import PpoTraining
    from llm_magics.methods.rlhf.reward import RewardTraining
    from llm_magics.training import TrainingMethod
    trainers = [RewardTraining(), PpoTraining(), *map(OfflineTraining, ("dpo", "kto", "orpo")),
                *map(OnlineTraining, ("grpo", "rloo"))]
    assert all(isinstance(t, TrainingMethod) for t in trainers)
    assert [t.name for t in trainers] == [f"rlhf {k}" for k in ("reward", "ppo", "dpo", "kto", "orpo", "grpo",
                                                                  "rloo")]
    # each one's run() is the base's: none writes the run out again
    assert {type(t).run for t in trainers} == {TrainingMethod.run}
