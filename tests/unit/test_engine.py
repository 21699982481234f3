"""The inference half of the engine: devices, batching, features, OOM back-off."""
import numpy as np
import pytest
import torch

from llm_magics.engine import batching, features
from llm_magics.engine.device import MemoryMonitor, pick_device, pick_dtype
from llm_magics.errors import UsageError
from llm_magics.models import load_model
from llm_magics.progress import NullSink, Progress

TEXTS = ["The film was wonderful.", "Dull.", "The plot made no sense at all and the ending was a letdown.",
         "The cast", "is stunning"] * 7


def test_device_choice_and_refusals():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(UsageError, match="unknown device"):
        pick_device("tpu9")
    assert pick_dtype(torch.device("cpu"), training=True) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16


def test_length_batches_respect_the_token_budget():
    lengths = np.random.default_rng(0).integers(1, 60, size=500)
    batches = batching.length_batches(lengths, max_batch=32, max_tokens=512)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 512
    assert lengths[batches[0]].max() == lengths.max()  # longest first: OOM shows at once


def test_collate_pads_each_batch_to_its_own_longest():
    out = batching.collate([[5, 6, 7], [8]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_bucketed_lengths_climb_a_ladder_of_eight_steps_per_doubling():
    assert [batching.bucketed(n, 1000) for n in (1, 15, 16, 17, 31, 33, 70, 130)] == [1, 15, 16, 18, 32, 36, 72, 144]
    for n in range(1, 600):
        assert n <= batching.bucketed(n, 1000) <= n * 9 / 8
        assert batching.bucketed(n, n) == n   # never past the cap (the longest row the model already takes)


def test_bucketed_batches_repeat_a_few_shapes_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 60, size=2000)
    plain = batching.length_batches(lengths, max_batch=128, max_tokens=1024)
    batches = batching.length_batches(lengths, max_batch=128, max_tokens=1024, bucket_cap=int(lengths.max()))
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))
    shapes = [(len(b), batching.bucketed(int(lengths[b].max()), int(lengths.max()))) for b in batches]
    for (rows, padded), batch in zip(shapes, batches):
        assert rows == 1 or rows * padded <= 1024
        collated = batching.collate([[1] * int(lengths[i]) for i in batch], 0, bucket_cap=int(lengths.max()))
        assert tuple(collated["input_ids"].shape) == (rows, padded)
    plain_shapes = {(len(b), int(lengths[b].max())) for b in plain}
    assert len(set(shapes)) < 0.6 * len(plain_shapes)


def test_shape_buckets_only_where_each_shape_builds_kernels():
    cpu, lengths = torch.device("cpu"), [3, 9, 5]
    assert batching.shape_buckets(lengths, cpu, torch.bfloat16) == 9
    assert batching.shape_buckets(lengths, cpu, torch.float32) is None
    assert batching.shape_buckets(lengths, torch.device("cuda"), torch.bfloat16) is None


@pytest.mark.parametrize("fixture, pooling", [("tiny_bert", "mean"), ("tiny_bert", "cls"), ("tiny_llama", "last")])
def test_bucketed_bf16_features_equal_one_text_at_a_time(request, fixture, pooling):
    """bf16 on a CPU pads batches up the ladder: the pads must not reach the pooled features."""
    loaded = load_model(str(request.getfixturevalue(fixture)), dtype=torch.bfloat16)
    candidates = [" ".join(["the film was good"] * k) for k in range(4, 16)]     # about 17-90 tokens
    lengths = [len(ids) for ids in batching.tokenize(loaded.tokenizer, candidates, 128)]
    texts = [t for t, n in zip(candidates, lengths) if batching.bucketed(n, 1000) > n][:5]   # each gets pads
    assert len(texts) >= 3, lengths
    batched, _ = features.extract(loaded.model, loaded.tokenizer, texts, [2], pooling, max_tokens=64)
    for i, text in enumerate(texts):
        single, _ = features.extract(loaded.model, loaded.tokenizer, [text], [2], pooling)
        np.testing.assert_allclose(batched[2][i], single[2][0], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("fixture, pooling", [("tiny_bert", "mean"), ("tiny_bert", "cls"), ("tiny_llama", "last")])
def test_batched_features_equal_one_text_at_a_time(request, fixture, pooling):
    loaded = load_model(str(request.getfixturevalue(fixture)), dtype=torch.float32)
    layers = [0, 1, 2]
    batched, stats = features.extract(loaded.model, loaded.tokenizer, TEXTS, layers, pooling, max_tokens=64)
    for i, text in enumerate(TEXTS[:5]):
        single, _ = features.extract(loaded.model, loaded.tokenizer, [text], layers, pooling)
        for layer in layers:
            np.testing.assert_allclose(batched[layer][i], single[layer][0], atol=1e-5)
    assert stats.rows == len(TEXTS) and stats.tokens > len(TEXTS)


def test_oom_splits_the_batch_and_says_so():
    seen, messages = [], []

    def run(batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        seen.extend(batch.tolist())

    done = list(batching.with_oom_backoff([np.arange(8)], run, on_backoff=messages.append))
    assert sorted(seen) == list(range(8)) and len(done) == 4
    assert messages == [4, 2, 2]


def test_other_errors_are_not_swallowed():
    def run(batch):
        raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(batching.with_oom_backoff([np.arange(4)], run))


def test_feature_cache_round_trip(tmp_path, tiny_bert):
    loaded = load_model(str(tiny_bert), dtype=torch.float32)
    cache = features.FeatureCache(tmp_path)
    first, s1 = features.cached_features(loaded, TEXTS, [1, 2], "mean", cache)
    second, s2 = features.cached_features(loaded, TEXTS, [0, 1, 2], "mean", cache)
    assert (s1.extracted_layers, s2.cached_layers, s2.extracted_layers) == (2, 2, 1)
    np.testing.assert_array_equal(first[2], second[2])
    other, s3 = features.cached_features(loaded, TEXTS[:-1], [1], "mean", cache)
    assert s3.extracted_layers == 1  # different texts, different key


def test_memory_monitor_sees_a_transient_allocation():
    import time

    import psutil
    baseline = psutil.Process().memory_info().rss
    with MemoryMonitor(torch.device("cpu")) as during:
        block = np.ones(256 * 2**20 // 8)  # 256 MiB, touched
        time.sleep(0.1)
        del block
    assert during.peak_bytes - baseline > 200 * 2**20


def test_progress_events_reach_sinks_and_carry_stop():
    progress = Progress([NullSink()], run_id="r", title="t")
    progress.start(total=10)
    for _ in range(10):
        progress.advance(1, loss=0.5)
    progress.request_stop()
    progress.end("stopped")
    kinds = [e.kind for e in progress.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 10
    assert progress.should_stop and progress.state.status == "stopped"
