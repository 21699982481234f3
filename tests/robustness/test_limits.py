"""--max-length beyond the model's positions: clamped to them, with a note, before any work.

Without the clamp a row longer than the model's position table tokenizes, batches and then fails
inside the first forward pass (BERT: "The size of tensor a (300) must match the size of tensor b").
"""
from __future__ import annotations

import pandas as pd
import pytest

from llm_magics import api
from llm_magics.engine import limits


def long_rows(n: int = 24) -> pd.DataFrame:
    """Texts of ~300 tokens for the tiny BERT (128 positions); the label is in the first words."""
    words = ["good great fine"] * 100, ["bad awful dull"] * 100
    return pd.DataFrame({"text": [" ".join(words[i % 2]) for i in range(n)],
                         "label": ["pos" if i % 2 == 0 else "neg" for i in range(n)]})


def test_the_limit_comes_from_the_config_and_the_tokenizer(tiny_bert):
    from transformers import AutoConfig, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert limits.position_limit(tokenizer) == 128                      # config.json beside the tokenizer
    config = AutoConfig.from_pretrained(tiny_bert)
    config.max_position_embeddings = 64
    model = type("M", (), {"config": config})()
    assert limits.position_limit(tokenizer, model) == 64                # the model's config wins over the folder's
    tokenizer.model_max_length = 32
    assert limits.position_limit(tokenizer, model) == 32                # RoBERTa-style: the tokenizer knows better
    notes: list[str] = []
    assert limits.fit_max_length(4096, tokenizer, model, notes=notes) == 32
    assert notes == ["--max-length 4096 is beyond what the model reads (32 tokens): rows are cut at 32"]
    assert limits.fit_max_length(16, tokenizer, model, notes=notes) == 16 and len(notes) == 1


def test_no_limit_known_leaves_the_length_alone(tmp_path):
    tokenizer = type("T", (), {"model_max_length": int(1e30), "name_or_path": str(tmp_path)})()
    assert limits.position_limit(tokenizer) is None
    assert limits.fit_max_length(100_000, tokenizer) == 100_000


@pytest.mark.parametrize("train", ["all", "head"])
def test_finetune_with_a_max_length_beyond_the_model_trains_and_says_so(tiny_bert, train):
    result = api.finetune(model=str(tiny_bert), data=long_rows(), epochs=1, dtype="float32", seed=0,
                          max_length=4096, train=train, batch_size=8)
    assert 0 <= result.metrics["test_accuracy"] <= 1 and result.metrics["steps"] > 0
    if train == "all":
        assert any("--max-length 4096 is beyond what the model reads (128 tokens)" in n for n in result.notes)
    assert result.predict(["good great fine " * 100])  # prediction cuts rows the same way


def test_probe_with_a_max_length_beyond_the_model_extracts(tiny_bert):
    result = api.probe(model=str(tiny_bert), data=long_rows(), dtype="float32", max_length=4096)
    assert result.metrics["test_accuracy"] >= 0.9   # the label is in the first words, inside the cut


def test_sft_rows_are_cut_at_the_models_positions(tiny_llama):
    from transformers import AutoTokenizer

    from llm_magics.data.sft import SftData
    from llm_magics.tasks.causal_lm import SftTask
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    limit = limits.position_limit(tokenizer)
    assert limit and limit < 4096
    frame = pd.DataFrame({"prompt": ["say it"], "response": ["it " * 4000]})
    data = SftData(train=frame, validation=frame, test=None, mode="pairs", fingerprint="x")
    task = SftTask(data, tokenizer, 4096, device=__import__("torch").device("cpu"))
    assert max(len(ids) for ids, _ in task.rows["train"]) <= limit
    assert any(f"rows are cut at {limit}" in n for n in data.notes)
