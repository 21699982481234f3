"""One place decides where a run executes: the runner sends a launchable command with --devices/--nodes above 1
to the command's launcher (`launch_<handler>`); the method itself never asks."""
import pytest

from llm_magics import api


def test_every_launchable_subcommand_has_its_launcher():
    """A subcommand launches itself (`launch_<handler>`); a training method's run is launched whole by the runner."""
    from llm_magics.registry import registry
    cls = registry().load("rlhf")
    launchable = {word for word, command in cls.commands.items() if command.launchable}
    assert launchable == {"reward", "dpo", "kto", "orpo"}
    for word in launchable:
        assert callable(getattr(cls, cls.commands[word].launcher, None)), word


def test_a_training_method_is_launched_whole_by_the_runner(monkeypatch, tiny_bert, demo):
    from llm_magics import launch
    from llm_magics.methods.finetune import FinetuneMethod
    seen = []
    monkeypatch.setattr(launch, "run_launched", lambda method, o, ctx: seen.append((type(method), o.devices)) or 7)
    monkeypatch.setattr(FinetuneMethod, "run", lambda self, o, ctx: pytest.fail("the method ran in the kernel"))
    assert api.finetune(model=str(tiny_bert), data=demo[0], devices=2) == 7
    assert seen == [(FinetuneMethod, 2)]


@pytest.mark.parametrize("devices, where", [(2, "launched"), (1, "here")])
def test_the_runner_not_the_method_picks_the_launcher(monkeypatch, devices, where):
    from llm_magics.methods.rlhf import RlhfMethod
    monkeypatch.setattr(RlhfMethod, "dpo", lambda self, o, ctx: "here")
    monkeypatch.setattr(RlhfMethod, "launch_dpo", lambda self, o, ctx: "launched")
    assert api.rlhf.dpo(policy="p", data="pairs.jsonl", devices=devices) == where
