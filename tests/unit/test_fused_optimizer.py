"""The engine steps AdamW fused on the CPU (one kernel over every tensor): the same losses, step for step,
as the per-tensor loop it replaced."""
import torch

from llm_magics import api
from llm_magics.adapters import hub
from llm_magics.engine.loop import TrainConfig, TrainLoop, make_optimizer


def test_the_cpu_optimizer_is_fused():
    model = torch.nn.Linear(4, 2)
    assert all(group["fused"] for group in make_optimizer(model, TrainConfig(), torch.device("cpu")).param_groups)


def lora_losses(tiny_bert, frame, monkeypatch) -> list[float]:
    seen = []
    real_run = TrainLoop.run

    def recording(self):
        outcome = real_run(self)
        seen.append([loss for _, loss in outcome.losses])
        return outcome

    monkeypatch.setattr(TrainLoop, "run", recording)
    hub().release()
    api.lora(model=str(tiny_bert), data=frame, epochs=2, batch_size=16, lr=1e-2, dtype="float32", seed=0)
    hub().release()
    return seen[-1]


def test_fused_adamw_keeps_a_lora_runs_fp32_losses(tiny_bert, separable, monkeypatch):
    frame = separable[0].iloc[:160]
    fused = lora_losses(tiny_bert, frame, monkeypatch)
    real_adamw, made = torch.optim.AdamW, []

    def per_tensor(groups, **kwargs):
        made.append(real_adamw(groups, **{**kwargs, "fused": False, "foreach": False}))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", per_tensor)
    unfused = lora_losses(tiny_bert, frame, monkeypatch)
    assert made and not made[-1].param_groups[0]["fused"]
    assert len(fused) == len(unfused) >= 12
    assert unfused[-1] < unfused[0]   # it trained: the comparison is over steps that moved the weights
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(unfused), rtol=1e-4, atol=1e-5)
