"""The exact (flat) index's default: a float16 scan whose best candidates are rescored in float32 gives
float32's ids and scores; folders of the plain float32 and float16 formats keep loading and answering."""
import faiss
import numpy as np
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.retrieval import store, vectors


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def test_the_rescored_flat_index_answers_as_float32_does():
    data, queries = unit_vectors(20_000, 64, 0), unit_vectors(50, 64, 1)
    ids = np.arange(len(data), dtype=np.int64) * 7
    exact = vectors.new_index(vectors.Params(kind="flat", precision="float32"), 64)
    default = vectors.new_index(vectors.Params(kind="flat"), 64)
    half = vectors.new_index(vectors.Params(kind="flat", precision="float16"), 64)
    for index in (exact, default, half):
        vectors.add(index, data, ids)
    assert isinstance(faiss.downcast_index(default.index), faiss.IndexRefineFlat)
    want_scores, want_ids = vectors.search(exact, queries, 10)
    got_scores, got_ids = vectors.search(default, queries, 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-6)
    half_scores, _ = vectors.search(half, queries, 10)
    assert np.abs(half_scores - want_scores).max() > 1e-6   # what the rescoring removes


def test_the_rescored_index_deletes_by_rebuilding_and_keeps_its_vectors():
    data = unit_vectors(300, 16, 2)
    params = vectors.Params(kind="flat")
    index = vectors.new_index(params, 16)
    vectors.add(index, data, np.arange(300, dtype=np.int64))
    index = vectors.remove(index, params, np.array([5, 6], dtype=np.int64))
    kept_ids, kept = vectors.stored(index)
    assert index.ntotal == 298 and 5 not in kept_ids and 6 not in kept_ids
    np.testing.assert_array_equal(kept, data[kept_ids])
    _, found = vectors.search(index, data[[7]], 1)
    assert found[0, 0] == 7


@pytest.mark.parametrize("precision, inner", [("float32", faiss.IndexFlatIP), ("float16", faiss.IndexScalarQuantizer),
                                              ("auto", faiss.IndexRefineFlat)])
def test_each_precision_builds_saves_loads_and_queries(tiny_bert, precision, inner):
    """float32 and float16 are the formats folders were written in before "auto" became the default."""
    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    texts = [" ".join(rng.choice(words, 6)) + f" item{i}" for i in range(40)]
    frame = pd.DataFrame({"text": texts, "id": [f"doc{i}" for i in range(40)]})
    kwargs = {} if precision == "auto" else {"precision": precision}
    result = api.index.build(name="ix", source=frame, doc_id="id", model=str(tiny_bert), dtype="float32", **kwargs)
    assert result.info["params"]["precision"] == precision
    assert ("rescored in float32" in " ".join(result.notes)) == (precision == "auto")
    loaded = store._load("ix", store.folder_of("ix"))      # read back from disk, not the session's copy
    assert isinstance(faiss.downcast_index(loaded.dense.index), inner)
    hits = api.index.query(name="ix", query=texts[9], k=3, mode="dense")
    assert hits["source"].iloc[0] == "doc9"
