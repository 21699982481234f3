"""Preference data: the five row shapes, the shared files, and one clear error per malformed row."""
import json

import pandas as pd
import pytest

from llm_magics.errors import UsageError
from llm_magics.preference.data import normalize_preferences, prepare_preferences

from tests.helpers import SHARED, need_shared

HH = SHARED / "data" / "hh_rlhf_harmless" / "test.jsonl.gz"
DPO_DEMO = SHARED / "data" / "dpo_en_demo" / "dpo_en_demo.json"


def need(path):
    return need_shared(path, path.parent.name)


def test_prompt_chosen_rejected_texts_are_kept_as_they_are():
    frame = pd.DataFrame({"prompt": ["Q1", "Q2"], "chosen": [" good", " fine"], "rejected": [" bad", " poor"]})
    out = normalize_preferences(frame)
    assert out.to_dict("records") == [{"prompt": "Q1", "chosen": " good", "rejected": " bad"},
                                      {"prompt": "Q2", "chosen": " fine", "rejected": " poor"}]


def test_chat_message_lists_share_the_prompt_and_differ_in_the_answer():
    head = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}]
    frame = pd.DataFrame({"chosen": [head + [{"role": "assistant", "content": "Hello!"}]],
                          "rejected": [head + [{"role": "assistant", "content": [{"type": "text", "text": "Go."}]}]]})
    out = normalize_preferences(frame).iloc[0]
    assert out.prompt == "\n\nSystem: Be kind.\n\nHuman: Hi?\n\nAssistant:"
    assert (out.chosen, out.rejected) == (" Hello!", " Go.")


def test_hh_transcripts_split_at_the_last_shared_assistant_turn():
    shared = "\n\nHuman: a?\n\nAssistant: b\n\nHuman: c?\n\nAssistant:"
    frame = pd.DataFrame({"chosen": [shared + " Sure, here."], "rejected": [shared + " Sorry, no."]})
    out = normalize_preferences(frame).iloc[0]
    assert out.prompt == shared and out.chosen == " Sure, here." and out.rejected == " Sorry, no."


def test_sharegpt_conversations_with_chosen_and_rejected_objects():
    frame = pd.DataFrame([{"conversations": [{"from": "human", "value": "Name a colour"}],
                           "chosen": {"from": "gpt", "value": "Blue."}, "rejected": {"from": "gpt", "value": "No."}}])
    out = normalize_preferences(frame).iloc[0]
    assert out.prompt == "\n\nHuman: Name a colour\n\nAssistant:" and out.chosen == " Blue." and out.rejected == " No."


def test_ranked_lists_expand_into_all_ordered_pairs():
    best_first = pd.DataFrame({"prompt": ["P"], "responses": [["A", "B", "C"]]})
    pairs = normalize_preferences(best_first)
    assert list(zip(pairs.chosen, pairs.rejected)) == [("A", "B"), ("A", "C"), ("B", "C")]
    scored = pd.DataFrame({"prompt": ["P"], "completions": [["low", "high", "mid", "tie"]],
                           "scores": [[0.1, 0.9, 0.5, 0.5]]})
    pairs = normalize_preferences(scored)
    assert set(zip(pairs.chosen, pairs.rejected)) == {("high", "low"), ("high", "mid"), ("high", "tie"),
                                                      ("mid", "low"), ("tie", "low")}  # the tie gives no pair


def test_the_shared_hh_and_dpo_demo_files_load(tmp_path):
    hh = prepare_preferences(str(need(HH)))
    total = len(hh.train) + len(hh.validation) + len(hh.test)
    assert total == 2312 and all(p.endswith("Assistant:") for p in hh.train.prompt.head(50))
    assert hh.notes and hh.fingerprint
    demo = prepare_preferences(str(need(DPO_DEMO)), test_size=0.2)
    assert len(demo.train) + len(demo.validation) + len(demo.test) == 300
    assert all(p.startswith("\n\n") and p.endswith("\n\nAssistant:") for p in demo.train.prompt)
    assert (demo.train.chosen != demo.train.rejected).all()


def test_a_jsonl_file_of_pairs_goes_through_the_data_layer(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(20)))
    data = prepare_preferences(str(path), val_size=0.1, test_size=0.2, seed=1)
    assert (len(data.train), len(data.validation), len(data.test)) == (14, 2, 4)


@pytest.mark.parametrize("frame, words", [
    (pd.DataFrame({"prompt": ["p", "q"], "chosen": ["a", "same"], "rejected": ["b", "same "]}),
     ["row 1", "identical", "columns found: prompt, chosen, rejected"]),
    (pd.DataFrame({"prompt": ["p"], "answer": ["a"]}), ["no preference columns", "columns found: prompt, answer"]),
    (pd.DataFrame({"responses": [["a", "b"]]}), ["needs a prompt column", "columns found: responses"]),
    (pd.DataFrame({"chosen": ["Hello there"], "rejected": ["Goodbye"]}), ["row 0", "Assistant:", "prompt column"]),
    (pd.DataFrame({"chosen": [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}]],
                   "rejected": ["plain"]}), ["row 0", "chat messages and the other plain text"]),
    (pd.DataFrame({"chosen": [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}]],
                   "rejected": [[{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]]}),
     ["row 0", "differ before their last message"]),
    (pd.DataFrame({"prompt": ["p"], "chosen": [3], "rejected": ["b"]}), ["row 0", "chosen is a int"]),
    (pd.DataFrame({"prompt": ["p"], "responses": [["same", "same"]]}), ["row 0", "tied or identical"]),
    (pd.DataFrame({"prompt": [], "chosen": [], "rejected": []}), ["is empty"]),
])
def test_malformed_rows_are_named_with_the_columns_found(frame, words):
    with pytest.raises(UsageError) as error:
        normalize_preferences(frame)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_an_empty_file_is_a_usage_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UsageError, match="empty"):
        prepare_preferences(str(path))
