"""One place decides where a run executes: the runner sends a launchable command with --devices/--nodes above 1
to the command's launcher (`launch_<handler>`); the method itself never asks."""
import pytest

from llm_magics import api


def test_every_launchable_command_has_its_launcher():
    from llm_magics.registry import registry
    launchable = []
    for name in ("finetune", "lora", "rlhf"):
        cls = registry().load(name)
        for command in [cls.command(None), *cls.commands.values()]:
            if command.launchable:
                assert callable(getattr(cls, command.launcher, None)), (name, command.handler)
                launchable.append((name, command.handler))
    assert {("finetune", "run"), ("lora", "run"), ("rlhf", "reward"), ("rlhf", "dpo")} <= set(launchable)


@pytest.mark.parametrize("devices, where", [(2, "launched"), (1, "here")])
def test_the_runner_not_the_method_picks_the_launcher(monkeypatch, devices, where):
    from llm_magics.methods.rlhf import RlhfMethod
    monkeypatch.setattr(RlhfMethod, "dpo", lambda self, o, ctx: "here")
    monkeypatch.setattr(RlhfMethod, "launch_dpo", lambda self, o, ctx: "launched")
    assert api.rlhf.dpo(policy="p", data="pairs.jsonl", devices=devices) == where
