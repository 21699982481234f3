"""Kept training Results do not pin their models: the trained weights stay on disk
(checkpoint-best, or trained/), the newest Results keep their model loaded, older ones build it again
when they next predict, with the same answers; `%llm free` releases every model."""
import gc
import weakref

import pytest
import torch

from llm_magics import api
from llm_magics import training as training_mod
from llm_magics.errors import UsageError


def fit(model, frame, seed, **kwargs):
    args = dict(model=str(model), data=frame, train="all", epochs=1, lr=1e-3, dtype="float32", seed=seed)
    return api.finetune(**{**args, **kwargs})


def test_sft_results_reload_and_generate(tiny_llama, sft_rows):
    first = api.finetune(model=str(tiny_llama), data=sft_rows, task="sft", epochs=1, lr=3e-3, batch_size=8,
                         dtype="float32")
    answer = first.generate(["Say the word number 3"], max_new_tokens=4)
    for seed in (1, 2):
        api.finetune(model=str(tiny_llama), data=sft_rows, task="sft", epochs=1, lr=3e-3, batch_size=8,
                     dtype="float32", seed=seed)
    assert first._model is None
    assert first.generate(["Say the word number 3"], max_new_tokens=4) == answer


def test_kept_results_pin_at_most_keep_loaded_models_and_reload_the_same_weights(tiny_bert, separable):
    frame, pos, neg = separable
    texts = [" ".join(pos[:4]), " ".join(neg[:4]), "a b c"]
    results, models, logits = [], [], []
    for seed in range(5):
        result = fit(tiny_bert, frame, seed)
        results.append(result)
        models.append(weakref.ref(result._model))
        logits.append(result.logits(texts))
    gc.collect()
    alive = [ref() is not None for ref in models]
    assert alive == [False, False, False, True, True]            # only the newest KEEP_LOADED stay
    assert sum(r._model is not None for r in results) == training_mod.KEEP_LOADED
    for result, expected in zip(results, logits):                  # reloaded from disk: the same model
        assert torch.equal(result.logits(texts), expected)
        assert result.metrics["test_accuracy"] >= 0
    assert "best_checkpoint" in results[0].artifacts


def test_free_releases_every_model_and_predict_loads_it_again(tiny_bert, separable):
    frame, pos, _ = separable
    result = fit(tiny_bert, frame, 0)
    before = result.predict([" ".join(pos[:4])])
    model = weakref.ref(result._model)
    api.free()
    gc.collect()
    assert result._model is None and model() is None
    assert result.predict([" ".join(pos[:4])]) == before


def test_head_only_results_reuse_the_shared_base(tiny_bert, separable):
    frame, pos, neg = separable
    first = fit(tiny_bert, frame, 0, train="head", lr=5e-2, epochs=3)
    expected = first.logits([" ".join(pos[:3]), " ".join(neg[:3])])
    for seed in (1, 2):
        fit(tiny_bert, frame, seed, train="head", lr=5e-2, epochs=3)
    assert first._model is None
    assert torch.equal(first.logits([" ".join(pos[:3]), " ".join(neg[:3])]), expected)
    assert first._model.base is first._weights.build().base    # the session's cached base, not a copy


def test_weights_damaged_on_disk_are_one_line_when_loaded_again(tiny_bert, separable):
    from tests.robustness.test_checkpoint_damage import zero_data
    frame, _, _ = separable
    result = fit(tiny_bert, frame, 0)
    result.release()
    zero_data(result._weights.folder / "trainable.safetensors")
    with pytest.raises(UsageError) as info:
        result.predict(["x"])
    assert "\n" not in str(info.value) and "trainable.safetensors does not match" in str(info.value)
