"""`%probe` through the Python API, on tiny config-built models."""
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.models import cached


def test_probe_returns_a_full_result_and_records_it(tiny_bert, demo, store):
    train, test = demo
    result = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_f1", "val_f1"):
        assert 0 <= result.metrics[key] <= 1
    assert result.label_names == ["negative", "positive"]
    assert result.trainable_params == 32 + 1 and result.total_params > result.trainable_params
    assert result.device == "cpu" and result.dtype == "float32" and result.wall_s > 0
    assert result.rows_per_s > 0 and result.peak_mem_bytes > 0
    row = store.get(result.run_id)
    assert row["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert row["options"]["layer"] == "-1" and row["data_fingerprint"] == result.data_fingerprint
    assert "<table>" in result._repr_html_()


@pytest.mark.parametrize("layer", ["0", "-1"])
def test_probe_learns_a_separable_task(tiny_bert, separable, layer):
    frame, _, _ = separable
    result = api.probe(model=str(tiny_bert), data=frame, layer=layer, dtype="float32")
    assert result.metrics["test_accuracy"] >= 0.9


def test_layer_all_gives_one_probe_per_layer_and_a_plot(tiny_bert, demo):
    train, test = demo
    result = api.probe(model=str(tiny_bert), data=train, test=test, layer="all")
    table = result.tables["accuracy by layer"]
    assert table["layer"].tolist() == [0, 1, 2]
    assert result.figures["accuracy by layer"].startswith(b"\x89PNG")
    best = table.loc[table["val_accuracy"].idxmax(), "layer"]
    assert result.metrics["layer"] == best == result.layer


def test_second_identical_probe_hits_the_feature_cache(tiny_bert, demo):
    train, test = demo
    first = api.probe(model=str(tiny_bert), data=train, test=test, classifier="logreg")
    calls = []
    loaded = first._loaded  # the session-cached model the second run would use
    assert loaded in cached()
    hook = loaded.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        second = api.probe(model=str(tiny_bert), data=train, test=test, classifier="mlp")
    finally:
        hook.remove()
    assert calls == []
    assert second.extract_stats.rows == 0 and second.extract_stats.cached_layers == 3  # train, val, test
    assert "no forward pass ran" in " ".join(second.notes)
    assert second.run_id != first.run_id
    # the first run's classifier again, on the cached features: exactly the first run's scores
    again = api.probe(model=str(tiny_bert), data=train, test=test, classifier="logreg")
    assert again.extract_stats.rows == 0 and again.metrics["test_accuracy"] == first.metrics["test_accuracy"]


def test_no_cache_extracts_again(tiny_bert, demo):
    train, test = demo
    api.probe(model=str(tiny_bert), data=train, test=test)
    again = api.probe(model=str(tiny_bert), data=train, test=test, cache=False)
    assert again.extract_stats.rows == len(train) + len(test)


@pytest.mark.parametrize("classifier", ["mlp", "forest"])
def test_other_classifiers(tiny_bert, separable, classifier):
    frame, _, _ = separable
    result = api.probe(model=str(tiny_bert), data=frame, classifier=classifier, trees=50, dtype="float32")
    assert result.metrics["test_accuracy"] >= 0.85 and result.trainable_params > 0


def test_decoder_defaults_to_last_token_pooling(tiny_llama, demo):
    train, test = demo
    result = api.probe(model=str(tiny_llama), data=train, test=test)
    assert result.pooling == "last" and result.layer == 2


def test_result_predicts_new_texts(tiny_bert, separable):
    frame, pos, neg = separable
    result = api.probe(model=str(tiny_bert), data=frame, dtype="float32")
    texts = [" ".join(pos[:4]), " ".join(neg[:4]), " ".join(pos[-5:]), " ".join(neg[-5:])]
    assert result.predict(texts) == ["pos", "neg", "pos", "neg"]
    probs = result.predict_proba(texts[0])
    assert list(probs.columns) == ["neg", "pos"] and abs(probs.iloc[0].sum() - 1) < 1e-6


def test_free_releases_models_held_by_results(tiny_bert, demo):
    train, test = demo
    result = api.probe(model=str(tiny_bert), data=train, test=test)
    assert api.free() >= 1 and cached() == []
    with pytest.raises(RuntimeError, match="released"):
        result.predict(["x"])


@pytest.mark.parametrize("kwargs, message", [
    ({"modle": "minilm"}, "did you mean model"),
    ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
    ({"model": "minlm"}, "did you mean minilm"),
    ({"data": "missing_df"}, "no variable named 'missing_df'"),
    ({"text": "body"}, "--text 'body': no such column"),
    ({"data": pd.DataFrame({"a": ["x y"] * 9, "b": ["p q"] * 9, "label": [0, 1, 2] * 3})}, "several text columns"),
    ({"data": pd.DataFrame({"text": [], "label": []})}, "--data is empty"),
    ({"data": pd.DataFrame({"text": ["a", "b", "c", "d", "e"], "label": [1] * 5})}, "single class"),
    ({"data": "/nowhere/data.csv"}, "does not exist"),
    ({"layer": "7"}, "--layer 7 is out of range"),
    ({"layer": "top"}, "--layer: expects a layer index"),
    ({"pooling": "max"}, "--pooling 'max' is not valid"),
    ({"C": 0}, "--C: must be > 0"),
    ({"out": "not a name"}, "not a valid Python variable name"),
    ({"device": "cuda:7"}, "cuda"),
])
def test_bad_input_gives_one_usage_error_and_no_run_record(tiny_bert, demo, store, kwargs, message):
    train, test = demo
    args = {"model": str(tiny_bert), "data": train, "test": test, **kwargs}
    if "modle" in args:
        del args["model"]
    with pytest.raises(UsageError) as info:
        api.probe(**args)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert store.list() == []


def test_unreadable_file_format(tmp_path, tiny_bert, store):
    path = tmp_path / "train.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(UsageError, match="could not read .* as jsonl"):
        api.probe(model=str(tiny_bert), data=str(path))
    assert store.list() == []


def test_per_item_predictions_are_kept_and_pair_across_a_reordered_test_frame(tiny_bert, demo):
    from llm_magics.runs import predictions, stats
    train, test = demo
    first = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")
    frame = first.predictions
    assert len(frame) == len(test) and list(frame.columns) == list(predictions.COLUMNS)
    assert frame["correct"].mean() == pytest.approx(first.metrics["test_accuracy"])
    assert ((frame["score"] >= 0.5) & (frame["score"] <= 1)).all()          # the predicted class's probability
    assert frame["prediction"].tolist() == first.predict(test.text.tolist())
    saved = predictions.load(first.artifacts["predictions"])
    pd.testing.assert_frame_equal(saved, frame)
    reordered = api.probe(model=str(tiny_bert), data=train, test=test.sample(frac=1.0, random_state=1),
                          dtype="float32")
    left, right = stats.pair_items(first.predictions, reordered.predictions)
    assert len(left) == test.text.nunique() and (left == right).all()
