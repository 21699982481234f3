"""engine/batching.few_training_shapes: a training run where each new GEMM shape costs a kernel build (bf16 on a
CPU) pads its batches up a ladder of four lengths per doubling; the pads are masked, so every task's loss is the
loss of the batch padded to its own longest row."""
import numpy as np
import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.data import prepare_classification
from llm_magics.data.sft import prepare_sft
from llm_magics.engine import batching
from llm_magics.models import load_model
from llm_magics.models.classifier import SequenceClassifier
from llm_magics.preference.data import prepare_preferences
from llm_magics.preference.reward import PairTask
from llm_magics.tasks.causal_lm import SftTask
from llm_magics.tasks.classify import TokenTask

CPU = torch.device("cpu")
BF16, FP32 = torch.nn.Linear(2, 2).bfloat16(), torch.nn.Linear(2, 2)   # what the matmuls compute in, autocast off


def test_four_rungs_per_doubling_never_past_the_cap_nor_below_the_longest():
    assert [batching.bucketed(n, 1000, 4) for n in (5, 9, 13, 17, 25, 33, 50, 70)] == [5, 10, 14, 20, 28, 40, 56, 80]
    for n in range(1, 600):
        assert n <= batching.bucketed(n, 1000, 4) <= n * 5 / 4
        assert batching.bucketed(n, n, 4) == n


def test_the_ladder_holds_only_inside_a_run_that_builds_kernels_per_shape():
    rows = [[1] * 13, [1] * 5]
    assert batching.collate(rows, 0)["input_ids"].shape[1] == 13
    with batching.few_training_shapes(BF16, CPU, None, 30) as cap:
        assert cap == 30
        assert batching.collate(rows, 0)["input_ids"].shape[1] == 14
        assert batching.padded_length(29) == 30                    # the cap: the run's longest row
        assert batching.padded_length(40) == 40                    # never shorter than the rows (evaluation's)
        assert batching.collate(rows, 0, bucket_cap=13)["input_ids"].shape[1] == 13   # an explicit bucket wins
        with batching.few_training_shapes(FP32, CPU, None, 13):   # MKL's fp32 builds nothing per shape
            assert batching.collate(rows, 0)["input_ids"].shape[1] == 13
        assert batching.padded_length(13) == 14
    with batching.few_training_shapes(FP32, CPU, torch.bfloat16, 30):   # fp32 weights under bf16 autocast
        assert batching.padded_length(13) == 14
    with batching.few_training_shapes(FP32, torch.device("cuda"), torch.bfloat16, 30) as cap:
        assert cap is None and batching.padded_length(13) == 13
    assert batching.padded_length(13) == 13


def _words(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(["good", "film", "plot", "cast", "dull"][int(k)] for k in rng.integers(0, 5, size=length))
            for length in rng.integers(2, 30, size=n)]


def _on_and_off_the_ladder(model, task, indices) -> tuple[tuple[int, int], tuple, tuple]:
    """The batch's (plain, padded) widths, losses and real-token counts, in eval mode (no dropout)."""
    model.eval()
    plain = task.batch(indices, CPU)
    with batching.few_training_shapes(model, CPU, torch.bfloat16, max(task.lengths)):
        padded = task.batch(indices, CPU)
    with torch.no_grad():
        (a, tokens_a), (b, tokens_b) = task.loss(model, plain), task.loss(model, padded)
    return (plain["input_ids"].shape[1], padded["input_ids"].shape[1]), (a, b), (tokens_a, tokens_b)


def _indices_that_get_pads(lengths: list[int]) -> np.ndarray:
    order = np.argsort(lengths)
    for start in range(len(order) - 4):
        batch = order[start:start + 4]
        longest = max(lengths[i] for i in batch)
        if batching.bucketed(longest, max(lengths), batching.TRAINING_RUNGS) > longest:
            return batch
    raise AssertionError(lengths)


@pytest.mark.parametrize("fixture, pooling", [("tiny_bert", "mean"), ("tiny_llama", "last")])
def test_a_classifier_loss_is_the_same_on_the_ladder(request, fixture, pooling):
    loaded = load_model(str(request.getfixturevalue(fixture)), dtype=torch.float32)
    texts = _words(40)
    data = prepare_classification(pd.DataFrame({"text": texts, "label": ["a", "b"] * 20}), seed=0)
    task = TokenTask(data, loaded.tokenizer, 64, CPU)
    torch.manual_seed(0)
    model = SequenceClassifier(loaded.model, 2, pooling)
    widths, (plain, padded), (tokens, padded_tokens) = _on_and_off_the_ladder(
        model, task, _indices_that_get_pads(task.lengths))
    assert widths[1] > widths[0] and tokens == padded_tokens
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=2e-5)


def test_an_sft_loss_is_the_same_on_the_ladder(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    frame = pd.DataFrame({"prompt": _words(40, 1), "response": _words(40, 2)})
    task = SftTask(prepare_sft(frame, seed=0), tokenizer, 96, CPU)
    widths, (plain, padded), (tokens, padded_tokens) = _on_and_off_the_ladder(
        model, task, _indices_that_get_pads(task.lengths))
    assert widths[1] > widths[0] and tokens == padded_tokens
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=2e-5)


def test_a_reward_pair_loss_is_the_same_on_the_ladder(tiny_bert):
    loaded = load_model(str(tiny_bert), dtype=torch.float32)
    frame = pd.DataFrame({"prompt": _words(40, 3), "chosen": _words(40, 4), "rejected": _words(40, 5)})
    task = PairTask(prepare_preferences(frame, seed=0), loaded.tokenizer, 96, CPU)
    torch.manual_seed(0)
    model = SequenceClassifier(loaded.model, 1, "mean")
    widths, (plain, padded), (tokens, padded_tokens) = _on_and_off_the_ladder(
        model, task, _indices_that_get_pads(task.lengths))
    assert widths[1] > widths[0] and tokens == padded_tokens
    torch.testing.assert_close(padded, plain, atol=2e-5, rtol=2e-5)


def test_a_bf16_cpu_run_trains_on_a_few_padded_shapes_and_an_fp32_run_on_its_own(tiny_bert, monkeypatch):
    from llm_magics.tasks import classify
    shapes: list[int] = []
    real_collate = classify.collate

    def spy(rows, pad_id, **kwargs):
        out = real_collate(rows, pad_id, **kwargs)
        if not kwargs:                                     # a training batch (inference passes its bucket)
            shapes.append((max(len(r) for r in rows), out["input_ids"].shape[1]))
        return out

    monkeypatch.setattr(classify, "collate", spy)
    frame = pd.DataFrame({"text": _words(240, 6), "label": ["a", "b"] * 120})
    for dtype in ("bfloat16", "float32"):
        shapes.clear()
        api.finetune(model=str(tiny_bert), data=frame, train="all", epochs=1, batch_size=8, dtype=dtype)
        assert shapes
        longest = max(length for length, _ in shapes)
        if dtype == "bfloat16":
            assert all(padded == batching.bucketed(length, longest, 4) for length, padded in shapes), shapes
            assert len({padded for _, padded in shapes}) < len({length for length, _ in shapes})
        else:
            assert all(padded == length for length, padded in shapes), shapes
