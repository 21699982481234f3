"""engine/attention.py: the plain-matmul attention gives transformers' SDPA results (masks, causal, grouped heads,
dropout with the same masks), takes only the calls it should, and puts the registry back as it found it."""
import contextlib

import numpy as np
import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from llm_magics.engine import attention
from llm_magics.engine import dropout as masks

CPU = torch.device("cpu")


class Layer(nn.Module):
    def __init__(self, causal: bool, groups: int = 1):
        super().__init__()
        self.is_causal, self.num_key_value_groups = causal, groups


def _qkv(batch=3, heads=4, length=9, dim=8, groups=1, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, h, length, dim, generator=generator).to(dtype).requires_grad_()  # noqa: E731
    return make(heads), make(heads // groups), make(heads // groups)


def _padding(batch=3, length=9):
    mask = torch.ones(batch, 1, length, length, dtype=torch.bool)
    mask[1, ..., -3:] = False                  # the second row's last three keys are padding
    return mask


def _both(layer, q, k, v, mask, **kwargs):
    """(SDPA's output and input gradients, ours) for the same inputs."""
    results = []
    for marked in (False, True):
        for t in (q, k, v):
            t.grad = None
        with attention.short_attention(layer if marked else nn.Module(), CPU):
            out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](layer, q, k, v, mask, **kwargs)
        out.float().square().sum().backward()
        results.append([out.detach().float()] + [t.grad.float().clone() for t in (q, k, v)])
    return results


def _close(a, b, tolerance):
    return all(((x - y).norm() / y.norm()).item() < tolerance for x, y in zip(a, b))


@pytest.mark.parametrize("case", ["padding", "causal", "grouped", "additive", "fp32 dropout-free"])
def test_it_gives_sdpa_s_output_and_gradients(case):
    groups = 2 if case == "grouped" else 1
    dtype = torch.float32 if case == "fp32 dropout-free" else torch.bfloat16
    q, k, v = _qkv(groups=groups, dtype=dtype)
    layer = Layer(causal=case in ("causal", "grouped"), groups=groups)
    mask = {"padding": _padding(), "causal": None, "grouped": None,
            "additive": torch.randn(3, 1, 9, 9).to(dtype), "fp32 dropout-free": _padding()}[case]
    plain, ours = _both(layer, q, k, v, mask, scaling=0.3)
    # bf16: the same sums rounded at other points (SDPA's flash kernel keeps fp32 blocks)
    assert _close(ours, plain, 2e-2 if dtype == torch.bfloat16 else 1e-6), case


def test_the_causal_mask_is_sdpa_s_and_a_single_query_sees_every_key():
    q, k, v = _qkv()
    layer = Layer(causal=True)
    with attention.short_attention(layer, CPU):
        out, _ = attention.attention(layer, q, k, v, None)
        last, _ = attention.attention(layer, q[:, :, -1:], k, v, None)
    assert torch.allclose(out[:, 0].float(), v[:, :, 0].float(), atol=1e-6)   # the first query sees only itself
    assert torch.allclose(last[:, 0].float(), out[:, -1].float(), atol=2e-2)   # decode: one query, all keys


def test_dropout_drops_attention_weights_with_the_run_s_masks_and_scale():
    q, k, v = _qkv()
    layer, mask = Layer(causal=False), _padding()
    with attention.short_attention(layer, CPU):
        torch.manual_seed(4)
        out, _ = attention.attention(layer, q, k, v, mask, dropout=0.25)
    torch.manual_seed(4)
    keep = masks.keep_mask(torch.Size([3, 4, 9, 9]), 0.25)
    scores = (q.double() @ k.double().transpose(2, 3) * 8 ** -0.5).masked_fill(~mask, float("-inf"))
    expected = (scores.softmax(-1) * keep * masks.kept_scale(0.25)) @ v.double()
    assert ((out.double() - expected.transpose(1, 2)).norm() / expected.norm()).item() < 2e-2
    assert 0.2 < 1 - keep.float().mean().item() < 0.3


def test_it_passes_every_call_it_should_not_take_to_the_function_it_replaced(monkeypatch):
    calls = []
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa",
                        lambda *a, **kw: calls.append(kw) or sdpa_attention_forward(*a, **kw))
    layer, q, k, v = Layer(causal=False), *_qkv()
    long_q, long_k, long_v = _qkv(length=attention.MAX_KEYS + 1, batch=1, heads=1)
    with attention.short_attention(layer, CPU):
        attention.attention(layer, q, k, v, None)                                   # taken
        assert calls == []
        attention.attention(Layer(causal=False), q, k, v, None)                     # a module not marked
        attention.attention(layer, long_q, long_k, long_v, None)                    # too long
        attention.attention(layer, *_qkv(dtype=torch.float32), None)                # fp32, no dropout
        attention.attention(layer, q, k, v, None, position_bias=torch.zeros(1, 4, 9, 9))
        attention.attention(layer, q, k, v, None, dropout=1.0)
    assert len(calls) == 5


def test_the_registry_is_ours_only_inside_blocks_and_nested_blocks_put_back_what_was_there(monkeypatch):
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping
    one, two = nn.Linear(2, 2), nn.Linear(2, 2)
    with attention.short_attention(one, CPU) as active:
        assert active and ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.attention
        with attention.short_attention(two, CPU):
            assert two in attention._marked and one in attention._marked
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.attention and two not in attention._marked
    assert "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping and one not in attention._marked
    theirs = lambda *a, **kw: None   # noqa: E731  (a user's own override stays theirs)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", theirs)
    with attention.short_attention(one, CPU):
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.attention
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is theirs
    with attention.short_attention(one, torch.device("cuda")) as active:     # nothing to do off the CPU
        assert not active and ALL_ATTENTION_FUNCTIONS["sdpa"] is theirs


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_llama"])
def test_a_tiny_model_s_logits_and_gradients_are_sdpa_s_in_bf16(which, request):
    from transformers import AutoModel
    model = AutoModel.from_pretrained(request.getfixturevalue(which)).train()
    for module in model.modules():            # no dropout: both paths compute the same function
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    ids = torch.randint(5, 90, (3, 11))
    padding = torch.ones(3, 11, dtype=torch.long)
    padding[0, -4:] = 0
    direction = torch.randn(3, 11, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    results = []
    for marked in (False, True):
        model.zero_grad()
        with attention.short_attention(model if marked else nn.Module(), CPU), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model(input_ids=ids, attention_mask=padding).last_hidden_state
        # a fixed random direction: a norm of a layer-normed output would have next to no gradient
        (hidden.float() * padding[..., None] * direction).sum().backward()
        # the key biases' gradients are zero in exact arithmetic (softmax ignores a shift shared by a query's
        # scores), so theirs are rounding noise on both sides: left out
        grads = [p.grad.float().clone() for name, p in model.named_parameters()
                 if p.grad is not None and not name.endswith("key.bias")]
        results.append([(hidden.float() * padding[..., None]).detach()] + grads)
    assert len(results[1]) == len(results[0]) > 5
    assert _close(results[1], results[0], 3e-2)


def test_scoring_after_a_cached_prefix_with_left_padding_gives_sdpa_s_scores_in_bf16(tiny_llama, monkeypatch):
    """Queries fewer than keys (a cached prefix), a padding mask from transformers: the scoring engine's case."""
    from transformers import AutoModelForCausalLM

    from llm_magics.engine import scoring
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 300, (23,), generator=generator).tolist()
    rows = [torch.randint(5, 300, (n,), generator=generator).tolist() for n in (3, 9, 1, 14, 6)]
    taken = []
    monkeypatch.setattr(attention, "_math", lambda *a, _math=attention._math: taken.append(1) or _math(*a))
    score = lambda: scoring.score_continuations(model, rows, [[11], [40, 41]], prefix=prefix,   # noqa: E731
                                                pad_id=3, max_batch=3)[0]
    ours = score()
    assert taken, "the plain form was not taken"
    monkeypatch.setattr(scoring, "short_attention", lambda *a: contextlib.nullcontext())
    plain = score()
    assert np.abs(ours - plain).max() < 0.05 * np.abs(plain).max(), (ours, plain)
