"""`%%icl`: templates, demonstrations, label scoring with a cached prefix, generation, RAG, the API backend.

Tiny config-built models have random weights, so these tests check the
mechanics exactly (scores against a plain full forward pass, prompts, metrics,
records, errors); quality is checked on the real models in test_real_icl_index.py.
"""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from IPython.core.interactiveshell import InteractiveShell

from llm_magics import api
from llm_magics.engine.scoring import score_continuations
from llm_magics.errors import UsageError
from llm_magics.methods.icl import prompts
from tests.helpers import TESTS_DIR

TEMPLATE = "Review: {text}\nSentiment: {label}"


def tiny_icl(model, **kwargs):
    return api.icl(model=str(model), dtype="float32", **kwargs)


@pytest.fixture(scope="module")
def lm(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama))


def full_forward_logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]) from one plain forward pass: the reference."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids))))


# ---- templates, labels, demonstrations ----------------------------------------------------------

def test_templates_fill_fields_and_leave_other_braces_alone():
    t = prompts.Template('Input: {text}\nJSON: {"key": [1, 2]} {{text}}\nAnswer: {label}')
    assert t.fields == ["text", "label"]
    assert t.render({"text": "hi", "label": "yes"}) == 'Input: hi\nJSON: {"key": [1, 2]} {text}\nAnswer: yes'
    assert t.query({"text": "hi"}, "label") == 'Input: hi\nJSON: {"key": [1, 2]} {text}\nAnswer:'
    assert t.opening("label") == " "
    assert prompts.Template("Q: {q}\nA:").query({"q": "x"}, "label") == "Q: x\nA:"


def test_templates_split_on_dash_lines_only():
    body = "A: {text} {label}\n---\nB: {text} -- not a separator {label}\n  ---  \nC {text}{label}\n"
    templates = prompts.split_templates(body)
    assert [t.number for t in templates] == [1, 2, 3]
    assert templates[1].text == "B: {text} -- not a separator {label}" and templates[2].text == "C {text}{label}"
    with pytest.raises(UsageError, match="empty"):
        prompts.split_templates("A {label}\n---\n\n---\nB {label}")


@pytest.mark.parametrize("labels, gold, expected, note", [
    (["negative", "positive"], ["positive", "negative"], {"negative": 0, "positive": 1}, ""),
    (["negative", "positive"], [0, 1, 1], {"0": 0, "1": 1}, "labels by position: 0 → negative, 1 → positive"),
    (["bad", "good"], ["neg", "pos"], {"neg": 0, "pos": 1}, "labels in sorted order: neg → bad, pos → good"),
    (["1=great", "0=awful"], [0, 1], {"1": 0, "0": 1}, ""),
])
def test_labels_match_the_gold_values(labels, gold, expected, note):
    mapping = prompts.parse_labels(labels, gold)
    assert mapping.index == expected and mapping.note == note
    assert mapping.words == [x.split("=")[-1] for x in labels]


def test_labels_that_match_nothing_or_repeat_are_usage_errors():
    with pytest.raises(UsageError, match="do not match the gold labels"):
        prompts.parse_labels(["a", "b"], ["x", "y", "z"])
    with pytest.raises(UsageError, match="repeats"):
        prompts.parse_labels(["a", "a"], [])
    with pytest.raises(UsageError, match="tokenizes to nothing"):
        prompts.parse_labels(["a", " "], [])


def test_balanced_selection_takes_as_many_of_each_label_and_is_seeded():
    classes = np.array([0] * 30 + [1] * 5 + [2] * 12)
    picked, note = prompts.select_fixed(len(classes), 9, "balanced", 3, classes)
    assert sorted(np.bincount(classes[picked], minlength=3).tolist()) == [3, 3, 3] and not note
    assert picked == prompts.select_fixed(len(classes), 9, "balanced", 3, classes)[0]
    assert picked != prompts.select_fixed(len(classes), 9, "balanced", 4, classes)[0]
    short, note = prompts.select_fixed(len(classes), 18, "balanced", 0, classes)
    assert np.bincount(classes[short]).tolist() == [7, 5, 6] and "topped up" in note
    with pytest.raises(UsageError, match="--shots 48 is more than the 47 demonstrations"):
        prompts.select_fixed(len(classes), 48, "random", 0, None)


# ---- the scoring engine --------------------------------------------------------------------------

def test_cached_prefix_and_left_padded_batches_match_plain_forward_passes(lm):
    model, _ = lm
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 300, (23,), generator=g).tolist()
    rows = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (3, 9, 1, 14, 6, 2, 11)]
    continuations = [[11], [40, 41], [77, 3, 9]]
    for pre in (prefix, []):
        scores, lengths, stats = score_continuations(model, rows, continuations, prefix=pre, pad_id=3, max_batch=3)
        reference = np.array([[full_forward_logprob(model, pre + r + c, len(pre) + len(r)) for c in continuations]
                              for r in rows])
        np.testing.assert_allclose(scores, reference, atol=2e-5)
        assert lengths.tolist() == [1, 2, 3] and stats.rows == len(rows) and stats.tokens > 0


def test_bf16_batches_padded_up_the_shape_ladder_match_plain_forward_passes(tiny_llama):
    """In bf16 on a CPU the rows are left-padded up `batching.bucketed`'s ladder (one kernel per shape): the
    extra pads must not reach the scores."""
    from transformers import AutoModelForCausalLM

    from llm_magics.engine.batching import bucketed
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(5, 300, (19,), generator=g).tolist()
    rows = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (16, 18, 22, 26, 34, 42)]
    assert all(bucketed(n + 1, 100) > n + 1 for n in (16, 18, 22, 26, 34, 42))   # row + the label's first token
    continuations = [[11, 12], [40, 41]]
    scores, _, _ = score_continuations(model, rows, continuations, prefix=prefix, pad_id=3, max_batch=2)
    reference = np.array([[full_forward_logprob(model, prefix + r + c, len(prefix) + len(r)) for c in continuations]
                          for r in rows])
    np.testing.assert_allclose(scores, reference, atol=5e-3, rtol=0)   # 1e-3 here; pads attended to: 1e-2


def test_single_token_labels_take_one_pass_per_batch(lm):
    model, _ = lm
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        rows = [[5, 6, 7]] * 10
        score_continuations(model, rows, [[11], [12], [13]], prefix=[9, 9, 9, 9], pad_id=3, max_batch=5)
    finally:
        hook.remove()
    assert len(calls) == 1 + 2   # the prefix once, then two batches of five rows for all three labels


def test_calibration_and_queries_share_one_prefix_cache(tiny_llama):
    from llm_magics.backends import LocalBackend
    from llm_magics.models import load_model
    backend = LocalBackend(load_model(str(tiny_llama), "causal_lm"))
    prefix = "Review: a fine film\nSentiment: positive\n\n"
    calls = []
    hook = backend.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        backend.score([(prefix, "Review: N/A\nSentiment:")] * 3, [" negative", " positive"])
        backend.score([(prefix, f"Review: row {i}\nSentiment:") for i in range(6)], [" negative", " positive"])
    finally:
        hook.remove()
    rows = [shape[0] for shape in calls]      # the prefix once, then each call's rows (a pass per label here)
    assert rows[0] == 1 and rows.count(1) == 1 and sorted(rows[1:]) == [3, 3, 6, 6], calls


# ---- %%icl end to end on the tiny decoder ----------------------------------------------------------

def test_scoring_run_matches_the_rendered_prompt_and_records_everything(tiny_llama, lm, demo, store):
    train, test = demo
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(24), demos=train, shots=4,
                      labels=["negative", "positive"], calibrate=False)
    assert result.metrics["queries"] == 24 and result.metrics["shots"] == 4
    assert 0 <= result.metrics["test_accuracy"] <= 1 and "test_f1" in result.metrics
    assert "zero_shot_accuracy" in result.metrics                 # zero-shot beside the few-shot run
    assert result.device == "cpu" and result.dtype == "float32" and result.rows_per_s > 0
    assert result.tokens_per_s > 0 and result.total_params > 0 and result.label_names == ["negative", "positive"]
    record = store.get(result.run_id)
    assert record["metrics"]["test_accuracy"] == result.metrics["test_accuracy"]
    assert record["options"]["template"] == TEMPLATE and record["peak_mem_bytes"] > 0
    # the prompt: four demonstrations rendered with the template, then the query up to its slot
    prompt = result.prompt
    assert prompt.count("Review: ") == 5 and prompt.endswith(f"Review: {test.text[0]}\nSentiment:")
    assert prompt.count("Sentiment: negative") + prompt.count("Sentiment: positive") == 4
    # the scores are the plain log-likelihoods of ' negative' / ' positive' after that prompt
    model, tokenizer = lm
    context = len(tokenizer(prompt)["input_ids"])
    ref = [full_forward_logprob(model, tokenizer(prompt + " " + w)["input_ids"], context)
           for w in ("negative", "positive")]
    logp = result.predictions.loc[0, ["logp_negative", "logp_positive"]].to_numpy(dtype=float)
    np.testing.assert_allclose(logp[1] - logp[0], ref[1] - ref[0], atol=1e-4)
    assert result.predictions.loc[0, "prediction"] == ("positive" if ref[1] > ref[0] else "negative")


def test_several_templates_are_ranked_on_the_same_rows_and_demonstrations(tiny_llama, demo):
    train, test = demo
    body = TEMPLATE + "\n---\nText: {text}\nIs it positive or negative? {label}"
    result = tiny_icl(tiny_llama, template=body, data=test.head(16), demos=train, shots=2,
                      labels=["negative", "positive"], zero_shot=False)
    table = result.tables["templates"]
    assert table["rank"].tolist() == [1, 2] and sorted(table["template"]) == [1, 2]
    assert table["accuracy"].is_monotonic_decreasing
    assert result.metrics["best_template"] == table["template"].iloc[0]
    assert result.metrics["test_accuracy"] == table["accuracy"].iloc[0]


def test_calibration_divides_out_the_content_free_prior(tiny_llama, demo, capsys):
    train, test = demo
    plain = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(20), demos=train, shots=2,
                     labels=["negative", "positive"], zero_shot=False, calibrate=False)
    assert "test_uncalibrated_accuracy" not in plain.metrics
    capsys.readouterr()
    calibrated = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(20), demos=train, shots=2,
                          labels=["negative", "positive"], zero_shot=False)      # calibration is the default
    assert calibrated.metrics["test_uncalibrated_accuracy"] == plain.metrics["test_accuracy"]
    assert " ok 23/23 queries" in capsys.readouterr().out   # the bar counts the three content-free prompts
    shift = (calibrated.predictions[["logp_negative", "logp_positive"]].to_numpy()
             - plain.predictions[["logp_negative", "logp_positive"]].to_numpy())
    assert np.allclose(shift, shift[0], atol=1e-6)   # one prior for the shared demonstrations: a constant shift
    assert not np.allclose(shift[0], 0)


def test_predict_scores_new_rows_with_the_same_demonstrations(tiny_llama, demo):
    train, test = demo
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(8), demos=train, shots=2,
                      labels=["negative", "positive"], zero_shot=False)
    again = result.predict(test.head(8))
    assert again == result.predictions["prediction"].tolist()
    assert result.predict([{"text": "a new review"}])[0] in ("negative", "positive")


def test_predict_calibrates_like_the_run(tiny_llama, demo):
    train, test = demo
    common = dict(template=TEMPLATE, data=test.head(24), demos=train, shots=2, labels=["negative", "positive"],
                  zero_shot=False)
    plain = tiny_icl(tiny_llama, calibrate=False, **common)
    calibrated = tiny_icl(tiny_llama, **common)
    wanted = calibrated.predictions["prediction"].tolist()
    assert wanted != plain.predictions["prediction"].tolist()     # calibration changes some answers here
    assert calibrated.predict(test.head(24)) == wanted


def test_predict_on_a_generation_run_generates(tiny_llama):
    data = pd.DataFrame({"question": ["q one", "q two", "q three"], "label": ["a", "b", "c"]})
    result = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, demos=data,
                      shots=1, max_tokens=4, stream=False)
    assert result.predict(data[["question"]]) == result.predictions["output"].tolist()


def test_predict_refuses_per_row_demonstrations_in_one_line(tiny_llama, tiny_bert, demo):
    train, test = demo
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(2), demos=train.head(6), shots=1,
                      select="similar", embed_model=str(tiny_bert), labels=["negative", "positive"], zero_shot=False)
    with pytest.raises(UsageError, match="cannot follow --select similar or --index"):
        result.predict(test.head(2))


def test_partly_labelled_rows_are_all_predicted_and_scored_where_labelled(tiny_llama, demo):
    train, test = demo
    data = test.head(12).copy()
    data["label"] = data["label"].astype(object)
    data.loc[[1, 4, 5], "label"] = [None, np.nan, ""]
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=data, demos=train, shots=2,
                      labels=["negative", "positive"], zero_shot=False)
    frame = result.predictions
    assert len(frame) == 12 and frame["gold"].isna().sum() == 3
    scored = frame.dropna(subset=["gold"])
    assert result.metrics["test_accuracy"] == pytest.approx((scored["gold"] == scored["prediction"]).mean())
    assert result.metrics["labelled_rows"] == 9
    assert any("over the 9 of 12 rows" in note for note in result.notes)
    unlabelled = data.assign(label=None)
    bare = tiny_icl(tiny_llama, template=TEMPLATE, data=unlabelled, labels=["negative", "positive"])
    assert "test_accuracy" not in bare.metrics and "gold" not in bare.predictions
    with pytest.raises(UsageError, match="--demos: row 1 has no 'label'"):
        tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(4), demos=data, shots=2,
                 labels=["negative", "positive"])


def test_generation_without_gold_answers_reports_no_answer_metrics(tiny_llama):
    data = pd.DataFrame({"question": ["q one", "q two", "q three"], "label": [None, np.nan, ""]})
    result = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, max_tokens=3,
                      stream=False)
    assert not {"test_exact_match", "test_contains"} & set(result.metrics)
    assert not any(isinstance(v, float) and np.isnan(v) for v in result.metrics.values())
    data["label"] = ["a", None, "c"]
    partly = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, max_tokens=3,
                      stream=False)
    assert "test_exact_match" in partly.metrics and partly.metrics["labelled_rows"] == 2


def test_list_and_squad_answers_show_one_answer_in_demonstrations(tiny_llama):
    squad = {"text": np.array(["Denver Broncos", "the Broncos"], dtype=object), "answer_start": np.array([177, 173])}
    assert prompts.answer_text(squad) == "Denver Broncos"
    assert prompts.answer_text(["Normans", "The Normans"]) == "Normans"
    assert prompts.answer_text([{"text": "1066"}]) == "1066" and prompts.answer_text([]) == ""
    demos = pd.DataFrame({"question": ["Who won?", "Who came?"], "answers": [squad, ["Normans", "The Normans"]]})
    data = pd.DataFrame({"question": ["Who lost?"], "answers": [{"text": ["Carolina"], "answer_start": [0]}]})
    result = tiny_icl(tiny_llama, template="Q: {question}\nA: {answers}", label="answers", data=data, demos=demos,
                      shots=2, select="random", max_tokens=2, stream=False)
    assert "A: Denver Broncos\n" in result.prompt and "A: Normans\n" in result.prompt
    assert "{" not in result.prompt and "[" not in result.prompt
    assert result.predictions.loc[0, "gold"] == "Carolina"


def test_sampling_keeps_the_global_torch_rng_and_is_seeded(tiny_llama):
    from llm_magics.backends import GenerateSettings, LocalBackend
    from llm_magics.models import load_model
    backend = LocalBackend(load_model(str(tiny_llama), "causal_lm"))
    requests = [("", "Question: q one\nAnswer:"), ("", "Question: q two\nAnswer:")]

    def sample(seed):
        return backend.generate(requests, GenerateSettings(max_tokens=8, temperature=1.0, seed=seed))

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = sample(5)
    assert torch.equal(torch.get_rng_state(), before)
    assert sample(5) == first and sample(6) != first


def test_generation_streams_answers_cuts_at_stop_strings_and_scores_exact_match(tiny_llama, capsys):
    data = pd.DataFrame({"question": ["q one", "q two", "q three"], "label": ["a", "b", "c"]})
    result = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, demos=data,
                      shots=1, max_tokens=6, stop=["\\n"], seed=1)
    out = capsys.readouterr().out
    for i in range(3):
        assert f"[{i}] " in out
    outputs = result.predictions["output"].tolist()
    assert len(outputs) == 3 and all("\n" not in o for o in outputs)
    assert 0 <= result.metrics["test_exact_match"] <= 1 and "test_contains" in result.metrics
    assert result.tokens_per_s > 0
    streamed = {int(m.group(1)): m.group(2) for line in out.splitlines()
                if (m := re.match(r"^\[(\d+)\] ?(.*)$", line))}
    assert [streamed[i].strip() for i in range(3)] == outputs


def test_exact_match_normalises_like_squad():
    metrics = prompts.normalise_answer("The  Battle, of Hastings!")
    assert metrics == "battle of hastings"
    from llm_magics.methods.icl import generation_metrics
    golds = [prompts.gold_answers(x) for x in (["Normans", "The Normans"], [{"text": "1066"}], None)]
    assert golds == [["Normans", "The Normans"], ["1066"], []]
    scores = generation_metrics(["the Normans", "in 1066 I think", "no idea"], golds)
    assert scores == {"exact_match": 0.5, "contains": 1.0}


def test_similar_selection_puts_the_nearest_demonstration_last(tiny_llama, tiny_bert):
    pool = pd.DataFrame({"text": ["the cast was wonderful", "the plot made no sense at all",
                                  "the soundtrack is stunning", "the ending fell flat"],
                         "label": ["positive", "negative", "positive", "negative"]})
    data = pd.DataFrame({"text": ["the plot made no sense at all today"], "label": ["negative"]})
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=data, demos=pool, shots=2, select="similar",
                      embed_model=str(tiny_bert), labels=["negative", "positive"], zero_shot=False)
    demos = result.prompt.split("\n\n")[:-1]
    assert len(demos) == 2 and demos[-1] == "Review: the plot made no sense at all\nSentiment: negative"


def test_query_field_outside_the_template_is_looked_up_and_a_missing_one_names_the_columns(tiny_llama, tiny_bert):
    pool = pd.DataFrame({"text": ["great", "awful", "lovely", "dull"], "topic": ["cast", "plot", "music", "ending"],
                         "label": ["positive", "negative", "positive", "negative"]})
    data = pd.DataFrame({"text": ["bad"], "topic": ["plot twist"], "label": ["negative"]})
    common = dict(template=TEMPLATE, data=data, demos=pool, shots=1, select="similar", embed_model=str(tiny_bert),
                  labels=["negative", "positive"], zero_shot=False)
    result = tiny_icl(tiny_llama, query_field="topic", **common)   # not a template field: still the lookup key
    from llm_magics.retrieval import load_embedder
    vectors, _ = load_embedder(str(tiny_bert), torch.device("cpu"), torch.float32).encode(["plot twist"] + list(pool.topic))
    nearest = int(np.argmax(vectors[1:] @ vectors[0]))
    assert result.prompt.startswith(f"Review: {pool.text[nearest]}\nSentiment: {pool.label[nearest]}")
    with pytest.raises(UsageError, match=r"--query-field 'topc': no such column in --data; did you mean topic\?"):
        tiny_icl(tiny_llama, query_field="topc", **common)
    with pytest.raises(UsageError, match=r"--query-field 'topic': no such column in --demos"):
        tiny_icl(tiny_llama, query_field="topic", **{**common, "demos": pool.drop(columns="topic")})


def test_index_fills_context_for_queries_and_demonstrations(tiny_llama, tiny_bert):
    docs = pd.DataFrame({"text": ["Paris is the capital of France.", "The Nile flows north.",
                                  "Cats purr when content."], "id": ["paris", "nile", "cats"]})
    api.index.build(name="facts", source=docs, doc_id="id", model=str(tiny_bert), dtype="float32")
    questions = pd.DataFrame({"question": ["Which way does the Nile flow?", "What do cats do?"],
                              "label": ["north", "purr"]})
    template = "Context: {context}\nQuestion: {question}\nAnswer: {label}"
    result = tiny_icl(tiny_llama, template=template, data=questions, demos=questions, shots=1, index="facts",
                      top_k=1, max_tokens=3, stream=False)
    assert "Context: The Nile flows north.\nQuestion: Which way does the Nile flow?\nAnswer:" in result.prompt
    assert result.prompt.count("Context: ") == 2   # the demonstration got its own retrieved context


def test_cell_magic_in_a_shell_binds_out(tiny_llama, demo, capsys):
    sh = InteractiveShell.instance()
    sh.run_line_magic("load_ext", "llm_magics")
    try:
        sh.user_ns["train_df"], sh.user_ns["test_df"] = demo[0], demo[1].head(8)
        cell = (f"%%icl --model {tiny_llama} --dtype float32 --data test_df --demos train_df --shots 2 "
                f"--labels negative,positive --out r\n{TEMPLATE}\n")
        assert sh.run_cell(cell).success
        assert sh.user_ns["r"].metrics["queries"] == 8
        sh.run_cell("%icl?")
        assert "--labels" in capsys.readouterr().out
    finally:
        sh.run_line_magic("unload_ext", "llm_magics")


# ---- defaults, demonstrations shown, chat layout, answer slot, stopping ---------------------------------

def test_the_result_says_which_demonstrations_were_chosen_and_how(tiny_llama, demo):
    train, test = demo
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(4), demos=train, shots=4,
                      labels=["negative", "positive"], zero_shot=False, seed=3)
    table = result.tables["demonstrations"]
    assert table["position"].tolist() == [1, 2, 3, 4] and sorted(table["label"]) == ["negative"] * 2 + ["positive"] * 2
    shown = [f"Review: {train.text[row]}\nSentiment: {label}" for row, label in zip(table["demos_row"], table["label"])]
    assert result.prompt.startswith("\n\n".join(shown) + "\n\n")        # the table is the prompt's order
    rows = ", ".join(str(r) for r in table["demos_row"])
    first = table["label"].iloc[0]
    second = "positive" if first == "negative" else "negative"
    assert result.notes[0] == (f"4 demonstrations, balanced (--select auto), seed 3, from the 240 rows of --demos: "
                               f"rows {rows} ({first} ×2, {second} ×2); result.tables['demonstrations'] lists them")
    other = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(4), demos=train, shots=4, select="random",
                     labels=["negative", "positive"], zero_shot=False, seed=4)
    assert other.notes[0].startswith("4 demonstrations, random, seed 4, from the 240 rows of --demos: rows ")
    assert other.tables["demonstrations"]["demos_row"].tolist() != table["demos_row"].tolist()


def test_label_scores_are_calibrated_by_default_and_no_calibrate_turns_it_off(shell, tiny_llama):
    flags = f"--model {tiny_llama} --dtype float32 --data test_df --demos train_df --shots 2 --labels negative,positive"
    assert shell.run_cell(f"%%icl {flags} --out cal\n{TEMPLATE}\n").success
    assert shell.run_cell(f"%%icl {flags} --no-calibrate --out raw\n{TEMPLATE}\n").success
    cal, raw = shell.user_ns["cal"], shell.user_ns["raw"]
    assert cal.options["calibrate"] is True and raw.options["calibrate"] is False
    assert cal.metrics["test_uncalibrated_accuracy"] == raw.metrics["test_accuracy"]
    assert "test_uncalibrated_accuracy" not in raw.metrics
    shift = cal.predictions[["logp_negative", "logp_positive"]].to_numpy() - \
        raw.predictions[["logp_negative", "logp_positive"]].to_numpy()
    assert np.allclose(shift, shift[0], atol=1e-6) and not np.allclose(shift[0], 0)


def test_chat_puts_demonstrations_in_turns_and_scores_the_assistant_answer(tiny_llama, lm, demo):
    train, test = demo
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(6), demos=train, shots=2, chat=True,
                      labels=["negative", "positive"], zero_shot=False, calibrate=False)
    prompt = result.prompt
    demos = result.tables["demonstrations"]
    turns = "".join(f"<|im_start|>user\nReview: {train.text[row]}\nSentiment:<|im_end|>\n"
                    f"<|im_start|>assistant\n{label}<|im_end|>\n"
                    for row, label in zip(demos["demos_row"], demos["label"]))
    assert prompt == turns + f"<|im_start|>user\nReview: {test.text[0]}\nSentiment:<|im_end|>\n<|im_start|>assistant\n"
    model, tokenizer = lm
    context = len(tokenizer(prompt)["input_ids"])
    ref = [full_forward_logprob(model, tokenizer(prompt + w)["input_ids"], context) for w in ("negative", "positive")]
    logp = result.predictions.loc[0, ["logp_negative", "logp_positive"]].to_numpy(dtype=float)
    np.testing.assert_allclose(logp[1] - logp[0], ref[1] - ref[0], atol=1e-4)
    calibrated = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(6), demos=train, shots=2, chat=True,
                          labels=["negative", "positive"])           # content-free queries in chat turns too
    assert calibrated.metrics["test_uncalibrated_accuracy"] == result.metrics["test_accuracy"]
    assert 0 <= calibrated.metrics["zero_shot_accuracy"] <= 1 and "zero_shot_accuracy" in calibrated.metrics
    generated = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", chat=True, max_tokens=3,
                         data=pd.DataFrame({"question": ["q one"], "label": ["a"]}), stream=False)
    assert generated.prompt == "<|im_start|>user\nQuestion: q one\nAnswer:<|im_end|>\n<|im_start|>assistant\n"


def test_chat_calibration_asks_each_pass_content_free_queries_with_its_own_demonstrations(tiny_llama, demo,
                                                                                            monkeypatch):
    from llm_magics.backends import LocalBackend
    seen = []
    score = LocalBackend.score

    def recording(self, requests, continuations, progress=None):
        seen.extend(p + q for p, q in requests)
        return score(self, requests, continuations, progress)
    monkeypatch.setattr(LocalBackend, "score", recording)
    train, test = demo
    tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(4), demos=train, shots=2, chat=True,
             labels=["negative", "positive"])
    content_free = [text for text in seen if "Review: N/A" in text]
    assert sorted(text.count("<|im_start|>assistant\n") for text in content_free) == [1, 3]  # 0-shot, 2-shot
    assert len([text for text in seen if "<|im_start|>user\nReview: \nSentiment:" in text]) == 2


def test_the_one_label_column_the_template_names_is_the_answer_slot(tiny_llama, demo):
    train, test = (f.rename(columns={"label": "sentiment"}) for f in demo)
    template = "Review: {text}\nSentiment: {sentiment}"
    result = tiny_icl(tiny_llama, template=template, data=test.head(6), demos=train, shots=2,
                      labels=["negative", "positive"], zero_shot=False)
    assert result.prompt.endswith(f"Review: {test.text[0]}\nSentiment:") and "test_accuracy" in result.metrics
    assert any(n.startswith("answer slot: {sentiment}, the template's one label column") for n in result.notes)
    numeric = test.head(6).assign(sentiment=(test.head(6).sentiment == "positive").astype(int))
    assert tiny_icl(tiny_llama, template=template, data=numeric,
                    labels=["negative", "positive"]).metrics["queries"] == 6     # 0/1 labels by position
    both = test.head(6).assign(mood=test.head(6).sentiment)
    with pytest.raises(UsageError, match=r"several label columns \(mood, sentiment\); .* --label"):
        tiny_icl(tiny_llama, template="Review: {text}\nMood: {mood}\nSentiment: {sentiment}", data=both,
                 labels=["negative", "positive"])
    chosen = tiny_icl(tiny_llama, template="Review: {text}\nMood: {mood}\nSentiment: {sentiment}", data=both,
                      labels=["negative", "positive"], label="sentiment")
    assert chosen.prompt.endswith("Sentiment:")


def _stop_after(monkeypatch, rows: int, how: str):
    """Ask for a stop (Stop button) or interrupt the kernel (SIGINT) once `rows` prompts are done."""
    import signal

    from llm_magics.progress.events import Progress
    advance = Progress.advance

    def advance_then_stop(self, n=1, **metrics):
        advance(self, n, **metrics)
        if self.state.done >= rows and not self.should_stop:
            if how == "interrupt":
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            else:
                self.request_stop()
    monkeypatch.setattr(Progress, "advance", advance_then_stop)


def test_an_interrupt_stops_scoring_with_a_partial_result(tiny_llama, demo, monkeypatch, store):
    train, test = demo
    _stop_after(monkeypatch, 10, "interrupt")
    result = tiny_icl(tiny_llama, template=TEMPLATE, data=test.head(60), demos=train, shots=2,
                      labels=["negative", "positive"], batch_tokens=48)
    assert result.status == "stopped" and 0 < result.metrics["queries"] < 60
    frame = result.predictions
    assert len(frame) == result.metrics["queries"] and frame["prediction"].notna().all()
    assert result.metrics["test_accuracy"] == pytest.approx((frame["gold"] == frame["prediction"]).mean())
    assert "zero_shot_accuracy" not in result.metrics        # the zero-shot pass never ran
    assert any(n.startswith(f"stopped after {len(frame)} of 60 rows") for n in result.notes)
    assert store.get(result.run_id)["status"] == "stopped"


def test_stop_ends_generation_with_the_answers_so_far(tiny_llama, monkeypatch):
    data = pd.DataFrame({"question": [f"q {i}" for i in range(8)], "label": list("abcdefgh")})
    _stop_after(monkeypatch, 3, "stop")
    result = tiny_icl(tiny_llama, template="Question: {question}\nAnswer: {label}", data=data, max_tokens=2,
                      stream=False)
    assert result.status == "stopped" and result.metrics["queries"] == 3
    assert result.predictions["row"].tolist() == [0, 1, 2] and "test_exact_match" in result.metrics


# ---- mistakes: one UsageError line each, nothing recorded ------------------------------------------

@pytest.fixture
def shell(shell, demo):
    shell.user_ns["train_df"], shell.user_ns["test_df"] = demo[0], demo[1].head(4)
    return shell


def one_usage_line(shell, capsys, cell: str, seconds: float = 60) -> str:
    started = time.perf_counter()
    result = shell.run_cell(cell)
    assert time.perf_counter() - started < seconds
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
    assert not result.success and len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]


@pytest.mark.parametrize("flags, body, message", [
    ("--data test_df", "Review: {txet}\nSentiment: {label}", "{txet} is not a column of --data; did you mean text?"),
    ("--data test_df --demos train_df --shots 500", TEMPLATE, "--shots 500 is more than the 240 demonstrations"),
    ("--data test_df --labels negative,positive", "Review: {text}", "has no answer slot {label}"),
    ("--data test_df --demos train_df --shots 2", "Q: {text}\nA: {context} {label}", "pass --index NAME"),
    ("--data test_df --index ../etc --top-k 2", "{context} {text} {label}", "is a path"),
    ("--data test_df --index nosuch", "{context} {text} {label}", "no index named 'nosuch'"),
    ("--data test_df --labels good,bad,meh", TEMPLATE, "do not match the gold labels"),
    ("--data test_df --model {bert}", TEMPLATE, "needs a causal (decoder) language model"),
    ("--data test_df", "", "needs a prompt template"),
])
def test_mistakes_are_one_usage_line(shell, capsys, store, tiny_llama, tiny_bert, flags, body, message):
    model = "" if "--model" in flags else f"--model {tiny_llama} "
    line = one_usage_line(shell, capsys, f"%%icl {model}{flags.format(bert=tiny_bert)}\n{body}\n")
    assert message in line
    assert store.list() == []


def test_labels_that_tokenize_to_nothing_are_a_usage_error(shell, capsys, store, tiny_llama):
    shell.user_ns["words"] = ["negative", ""]
    line = one_usage_line(shell, capsys, f"import llm_magics.api as a\na.icl(model='{tiny_llama}', data=test_df, "
                                         f"labels=words, template='Review: {{text}} {{label}}')")
    assert "tokenizes to nothing" in line
    from llm_magics.backends import LocalBackend
    from llm_magics.models import load_model
    backend = LocalBackend(load_model(str(tiny_llama), "causal_lm"))
    with pytest.raises(UsageError, match="tokenizes to nothing"):
        backend.continuation_ids("Sentiment:", [" negative", ""])
    assert store.list() == []


# ---- the OpenAI-compatible backend against a real HTTP server --------------------------------------

KEY_ENV = "LLM_MAGICS_TEST_API_KEY"
SECRET = "sk-test-5e5e7-never-shown"


@pytest.fixture(scope="module")
def api_server(tiny_llama):
    proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "openai_stub_server.py"),
                             "--model", str(tiny_llama), "--key", SECRET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def test_api_scores_match_the_local_model_and_the_key_never_shows(api_server, tiny_llama, demo, store, monkeypatch,
                                                                    capsys):
    monkeypatch.setenv(KEY_ENV, SECRET)
    train, test = demo
    common = dict(template=TEMPLATE, data=test.head(10), demos=train, shots=2, labels=["negative", "positive"],
                  zero_shot=False)
    remote = api.icl(api_base=api_server, api_key_env=KEY_ENV, model="stub", **common)
    local = tiny_icl(tiny_llama, **common)
    assert remote.predictions["prediction"].tolist() == local.predictions["prediction"].tolist()
    np.testing.assert_allclose(remote.predictions[["logp_negative", "logp_positive"]].to_numpy(),
                               local.predictions[["logp_negative", "logp_positive"]].to_numpy(), atol=1e-3)
    assert remote.device == "api" and remote.model.startswith("stub @ http://127.0.0.1:")
    assert remote.rows_per_s > 0 and remote.tokens_per_s > 0
    shown = capsys.readouterr()
    for text in (repr(remote), remote._repr_html_(), str(remote.options), shown.out, shown.err,
                 Path(store.path).read_bytes().decode("latin-1")):
        assert SECRET not in text
    assert store.get(remote.run_id)["options"]["api_key_env"] == KEY_ENV


def test_api_generation_through_completions_and_chat(api_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    data = pd.DataFrame({"question": ["q one", "q two"]})
    for style in ("completions", "chat"):
        result = api.icl(api_base=api_server, api_key_env=KEY_ENV, api_style=style, template="Q: {question}\nA:",
                         data=data, max_tokens=4, stream=False, model="stub")
        assert len(result.predictions["output"]) == 2 and all(isinstance(o, str) for o in result.predictions["output"])


def test_a_wrong_key_is_refused_without_showing_it(api_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-123")
    with pytest.raises(UsageError) as caught:
        api.icl(api_base=api_server, api_key_env=KEY_ENV, template="Q: {question}\nA:",
                data=pd.DataFrame({"question": ["x"]}), max_tokens=2)
    assert "refused the request (401)" in str(caught.value) and "sk-wrong" not in str(caught.value)


def test_an_endpoint_that_is_down_is_one_line_fast(shell, capsys, store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]      # closed again: nothing listens there
    line = one_usage_line(shell, capsys, f"%%icl --api-base http://127.0.0.1:{port}/v1 --data test_df "
                                         f"--labels negative,positive\n{TEMPLATE}\n", seconds=15)
    assert "is not reachable (connection refused)" in line
    assert store.list() == []


def test_an_endpoint_that_never_answers_times_out_as_one_line(shell, capsys, store):
    with socket.socket() as listener:   # accepts connections (the kernel's backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        line = one_usage_line(shell, capsys, f"%%icl --api-base http://127.0.0.1:{port}/v1 --api-timeout 1 "
                                             f"--data test_df --labels negative,positive\n{TEMPLATE}\n", seconds=15)
    assert "did not answer within 1 s" in line
    assert store.list() == []


def test_a_key_in_the_url_is_refused():
    with pytest.raises(UsageError, match="put no key or credentials in the URL"):
        api.icl(api_base="http://user:sk-abc@127.0.0.1:9/v1", template="{x}", data=[{"x": "1"}])


def test_api_mean_score_divides_by_the_tokens_scored_for_each_prompt(api_server, tiny_llama, monkeypatch):
    from transformers import AutoTokenizer

    from llm_magics.backends import OpenAIBackend
    monkeypatch.setenv(KEY_ENV, SECRET)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    requests = [("", "Review: x"), ("", "Review: bo")]   # "bo" + "ring" merges: one fewer label token

    def label_tokens(context, label):
        offsets = tokenizer(context + label, return_offsets_mapping=True)["offset_mapping"]
        return sum(1 for start, _ in offsets if start >= len(context))

    counts = np.array([label_tokens(p + q, "ring") for p, q in requests])
    assert counts.tolist() == [2, 1]
    table = OpenAIBackend(api_server, "stub", KEY_ENV).score(requests, ["ring"])
    np.testing.assert_allclose(table.normalised("mean")[:, 0], table.logprobs[:, 0] / counts)


@pytest.mark.parametrize("kwargs, message", [
    (dict(chat=True), "--chat applies a local model's chat template; with --api-base, use --api-style chat"),
    (dict(api_key_env="sk-live-not-a-name"), "--api-key-env: expects the name of the environment variable"),
    (dict(api_key_env="1KEY"), "--api-key-env: expects the name"),
    (dict(api_base="http://127.0.0.1:9/v1#sk-secret"), "a URL with a '#' fragment is not an endpoint"),
    (dict(api_base="127.0.0.1:9/v1"), "expects an http(s) URL such as http://127.0.0.1:8000/v1"),
])
def test_api_options_are_checked_before_anything_runs(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        api.icl(template="{x}", data=[{"x": "1"}], **{"api_base": "http://127.0.0.1:9/v1", **kwargs})
    assert "sk-" not in str(caught.value)


def test_a_model_the_endpoint_does_not_serve_is_named(api_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(UsageError) as caught:
        api.icl(api_base=api_server, api_key_env=KEY_ENV, model="gpt-nope", template="Q: {question}\nA:",
                data=pd.DataFrame({"question": ["x"]}), max_tokens=2, stream=False)
    assert "does not serve the model 'gpt-nope'; name one it serves with --model (stub)" in str(caught.value)
