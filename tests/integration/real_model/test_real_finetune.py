"""`%finetune` on the embedded models: the quality claims, checked for real."""
import csv
import re

import pandas as pd
import pytest

from tests.helpers import need_sst2
from llm_magics import api
from llm_magics.demo import sentiment

pytestmark = pytest.mark.real_model


def test_minilm_on_sst2_all_layers_beat_head_only_and_both_are_compared():
    root = need_sst2()
    train = pd.read_csv(root / "train.tsv", sep="\t", quoting=csv.QUOTE_NONE).sample(4000, random_state=0)
    test = str(root / "test.tsv")
    probe = api.probe(model="minilm", data=train, test=test)
    head = api.finetune(model="minilm", data=train, test=test, train="head")
    full = api.finetune(model="minilm", data=train, test=test, train="all")
    assert full.metrics["test_accuracy"] >= 0.84, full.metrics
    assert head.metrics["test_accuracy"] >= probe.metrics["test_accuracy"] - 0.02, (head.metrics, probe.metrics)
    assert head.trainable_params == 384 * 2 + 2 and full.trainable_params == full.total_params
    table = api.compare().table
    assert {head.run_id, full.run_id, probe.run_id} <= set(table["run_id"])
    assert full.tokens_per_s > 0 and full.peak_mem_bytes > 0 and full.device == "cpu"


def test_smollm2_sft_learns_the_answer_format():
    reviews = sentiment(120, seed=3)
    rows = pd.DataFrame({"prompt": "Review: " + reviews["text"],
                         "response": "<verdict>" + reviews["label"].str.upper() + "</verdict>"})
    result = api.finetune(model="smollm2", data=rows.iloc[:40], task="sft", train="all", epochs=1, lr=1e-4,
                          batch_size=8)
    history = result.tables["history"]
    assert history["val_loss"].iloc[-1] < 0.5 * history["val_loss"].iloc[0], history
    answers = result.generate(rows["prompt"].iloc[100:106].tolist(), max_new_tokens=12)
    assert all(re.fullmatch(r"<verdict>(POSITIVE|NEGATIVE)</verdict>", a) for a in answers), answers
