"""engine/fast_paths.py: what a training run swaps in for speed keeps the arithmetic — dropout's rate, scale and
gradient; the models a Result keeps; the loss trajectory of a tiny run (only the masks' draws differ)."""
import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from llm_magics import api
from llm_magics.engine import dropout as masks
from llm_magics.engine import fast_paths as fp


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_keep_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    kept = masks.keep_mask(torch.Size([2048, 1024]), p).double().mean().item()
    exact = 1 - round(p * 65536) / 65536
    assert abs(exact - (1 - p)) < 1e-5
    assert abs(kept - exact) < 5 * (exact * (1 - exact) / 2048 / 1024) ** 0.5, (p, kept)


def test_masks_are_drawn_from_the_global_generator_so_a_seed_or_a_saved_state_replays_them():
    torch.manual_seed(3)
    first = masks.keep_mask(torch.Size([64, 33]), 0.1)
    state = torch.get_rng_state()
    second = masks.keep_mask(torch.Size([64, 33]), 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, masks.keep_mask(torch.Size([64, 33]), 0.1))
    torch.set_rng_state(state)
    assert torch.equal(second, masks.keep_mask(torch.Size([64, 33]), 0.1))
    assert not torch.equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_word_dropout_zeroes_scales_and_passes_the_gradient_through_the_same_mask(dtype):
    torch.manual_seed(0)
    x = torch.randn(300, 257, dtype=dtype, requires_grad=True)
    drop = masks.WordDropout(0.2).train()
    y = drop(x)
    kept = y != 0
    scale = masks.kept_scale(0.2)
    assert torch.allclose(y[kept].float(), (x[kept].float() * scale), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert 0.78 < kept.float().mean().item() < 0.82
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.full_like(x.grad[kept].float(), scale), rtol=1e-2)
    assert torch.equal(drop.eval()(x), x)                       # eval: the identity, as nn.Dropout


def test_the_swap_covers_every_plain_dropout_on_a_cpu_only_and_puts_the_originals_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.ModuleDict({"a": nn.Dropout(0.3)}), nn.Dropout(0.0))
    originals = [model[1], model[2]["a"], model[3]]
    model.train()
    with fp.cheap_dropout(model, torch.device("cpu")) as swapped:
        assert swapped == 2
        assert type(model[1]) is masks.WordDropout and model[1].p == 0.1 and model[1].training
        assert type(model[2]["a"]) is masks.WordDropout and model[2]["a"].p == 0.3
        assert model[3] is originals[2]                        # p = 0: nothing to draw
        model.eval()
    assert [model[1], model[2]["a"], model[3]] == originals
    assert not model[1].training                               # a mode set inside the block carries over
    with fp.cheap_dropout(model, torch.device("cuda")) as swapped:   # CUDA's own dropout is fast
        assert swapped == 0 and model[1] is originals[0]


def test_adapter_input_casts_are_off_only_under_autocast():
    peft = pytest.importorskip("peft")
    base = nn.Sequential(nn.Linear(8, 8))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["0"]))
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers
    with fp.fast_paths(model, torch.device("cpu"), torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not any(m.cast_input_dtype_enabled for m in layers)
        # Outside autocast inside the run (TRL generates there) the input still goes to the adapter's fp32.
        assert all(m.cast_input_dtype_enabled for m in layers)
        base[0].base_layer.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = model(torch.ones(2, 8, dtype=torch.bfloat16))
        outside = model(torch.ones(2, 8, dtype=torch.bfloat16))   # a bf16 base, fp32 adapter, no autocast
        assert outside.dtype == torch.bfloat16 and torch.allclose(inside.float(), outside.float(), atol=0.05)
    assert all(m.cast_input_dtype_enabled is True for m in layers)
    with fp.fast_paths(model, torch.device("cpu"), None):
        assert all(m.cast_input_dtype_enabled for m in layers)


def _lora_pair(seed=0, **config):
    """A small PEFT LoRA model with nonzero B (fresh adapters start at B = 0, which would hide the update)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(seed)
    model = peft.get_peft_model(nn.Sequential(nn.Linear(12, 16), nn.GELU(), nn.Linear(16, 5)),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], **config))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.3)
    return model


def _forward_and_grads(model, x):
    model.zero_grad()
    out = model(x)
    out.float().square().sum().backward()
    return out.detach().float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_the_lora_update_added_inside_the_gemm_gives_peft_s_output_and_gradients(autocast):
    model = _lora_pair().eval()                  # eval: no dropout, so both paths see the same input
    x = torch.randn(3, 7, 12)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        plain = _forward_and_grads(model, x)
        with fp.lora_update_in_gemm(model) as count:
            assert count == 2
            fused = _forward_and_grads(model, x)
    # fp32: the same sums in another order; bf16: PEFT rounds the update three times, the GEMM once
    tolerance = 2e-2 if autocast else 1e-5
    close = lambda a, b: ((a - b).norm() / b.norm()).item() < tolerance     # noqa: E731
    assert close(fused[0], plain[0])
    assert plain[1].keys() == fused[1].keys() and any("lora_A" in n for n in fused[1])
    for name in plain[1]:
        assert close(fused[1][name], plain[1][name]), name
    assert all("forward" not in vars(m) for m in model.modules())         # PEFT's forward is back


def test_the_gemm_takes_over_the_adapter_dropout_s_scale_and_keeps_peft_s_output_and_gradients():
    """Training with lora_dropout: the masks multiply unscaled and the scale joins the GEMM's alpha. The same
    seed draws the same masks either way, so the output and gradients equal PEFT's with the cheap masks."""
    model = _lora_pair(lora_dropout=0.3).train()
    x = torch.randn(3, 7, 12)
    with fp.cheap_dropout(model, torch.device("cpu")) as swapped:
        assert swapped == 2
        torch.manual_seed(5)
        plain = _forward_and_grads(model, x)
        with fp.lora_update_in_gemm(model):
            torch.manual_seed(5)
            fused = _forward_and_grads(model, x)
            torch.manual_seed(6)
            other = _forward_and_grads(model, x)
    close = lambda a, b: ((a - b).norm() / b.norm()).item() < 1e-5     # noqa: E731
    assert close(fused[0], plain[0]) and not close(other[0], plain[0])   # the masks matter, and were the same
    for name in plain[1]:
        assert close(fused[1][name], plain[1][name]), name


def test_unscaled_dropout_keeps_the_elements_and_owes_the_scale_only_while_it_draws_masks():
    x = torch.randn(200, 50)
    drop = masks.WordDropout(0.25).train()
    kept, owed = drop.unscaled(x)
    assert owed == masks.kept_scale(0.25) and 0.2 < (kept == 0).float().mean() < 0.3
    assert torch.equal(kept[kept != 0], x[kept != 0])
    same, owed = drop.eval().unscaled(x)
    assert torch.equal(same, x) and owed == 1.0
    assert masks.WordDropout(1.0).train().unscaled(x)[1] == 1.0          # p = 1: nn.Dropout's zeros, nothing owed
    assert not masks.WordDropout(1.0).train().unscaled(x)[0].any()


def test_the_lora_update_in_the_gemm_leaves_every_other_case_to_peft():
    peft = pytest.importorskip("peft")
    x = torch.randn(4, 12)
    calls = []
    dora = _lora_pair(use_dora=True).eval()
    merged = _lora_pair().eval()
    merged.merge_adapter()
    disabled = _lora_pair().eval()
    two = _lora_pair().eval()
    two.add_adapter("other", peft.LoraConfig(r=2, target_modules=["0"]))
    two.base_model.set_adapter(["default", "other"])
    for model in (dora, merged, two, _lora_pair().eval()):
        expected = model(x)
        with fp.lora_update_in_gemm(model):
            layer = next(m for m in model.modules() if "forward" in vars(m))
            original = type(layer).forward
            type(layer).forward = lambda self, *a, _f=original, **k: calls.append(1) or _f(self, *a, **k)
            try:
                assert torch.allclose(model(x), expected, atol=1e-6)
            finally:
                type(layer).forward = original
    assert len(calls) == 6         # the three odd models' two layers each fell back to PEFT; the plain one did not
    with disabled.disable_adapter(), fp.lora_update_in_gemm(disabled):
        assert torch.allclose(disabled(x), disabled.get_base_model()(x))
    # a bf16 base with fp32 adapters outside autocast: PEFT's casts decide, the output stays bf16
    mixed = _lora_pair()
    mixed.base_model.model[0].base_layer.to(torch.bfloat16)
    mixed.base_model.model[2].base_layer.to(torch.bfloat16)
    with fp.lora_update_in_gemm(mixed):
        assert mixed(x.bfloat16()).dtype == torch.bfloat16


def test_a_tiny_lora_run_keeps_its_loss_trajectory_and_accuracy_with_the_fast_paths(tiny_bert, separable,
                                                                                     monkeypatch):
    """The same runs with and without the swaps: only dropout's draws differ, so over three seeds the curves
    agree within noise (one seed alone is not enough: at lr 1e-2 on 80 rows one unlucky draw of masks ends a
    run at twice the loss of another, with or without the swaps)."""
    import llm_magics.engine.loop as loop
    frame, _, _ = separable
    curves: list[np.ndarray] = []
    plain_run = loop.TrainLoop.run

    def run_keeping_the_curve(self):
        outcome = plain_run(self)
        curves.append(np.array([loss for _, loss in outcome.losses]))
        return outcome
    monkeypatch.setattr(loop.TrainLoop, "run", run_keeping_the_curve)
    runs = lambda: [api.lora(model=str(tiny_bert), data=frame, epochs=4, batch_size=16, lr=1e-2,  # noqa: E731
                             dropout=0.1, device="cpu", dtype="bfloat16", seed=seed) for seed in range(3)]
    fast = runs()
    monkeypatch.setattr(loop, "fast_paths", lambda *a: contextlib.nullcontext())
    plain = runs()
    a, b = np.stack(curves[:3]), np.stack(curves[3:])
    assert a.shape == b.shape and a.shape[1] > 10
    # each first step sees the same weights and the same batch: its loss differs only by the masks
    assert (abs(a[:, 0] - b[:, 0]) < 0.1 * b[:, 0]).all(), (a[:, 0], b[:, 0])
    assert abs(a[:, -10:].mean() - b[:, -10:].mean()) < 0.15 * b[:, 0].mean(), (a[:, -10:], b[:, -10:])
    assert a[:, -10:].mean() < 0.5 * a[:, :5].mean() and b[:, -10:].mean() < 0.5 * b[:, :5].mean()   # both learned
    for held in (fast, plain):     # chance 0.5, 80 rows
        assert np.mean([r.metrics["test_accuracy"] for r in held]) >= 0.85
    for result in fast + plain:
        api.lora.unload(name=result.adapter)
