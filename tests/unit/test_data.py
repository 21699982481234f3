"""Data references: variables, files and datasets; columns, labels and splits."""
import json

import datasets
import numpy as np
import pandas as pd
import pytest

from llm_magics.data import load_frame, prepare_classification
from llm_magics.errors import UsageError

ROWS = [{"text": f"review number {i} {'great' if i % 2 else 'awful'}", "label": "pos" if i % 2 else "neg"}
        for i in range(40)]


@pytest.fixture
def frame():
    return pd.DataFrame(ROWS)


@pytest.mark.parametrize("make", [
    lambda rows: pd.DataFrame(rows),
    lambda rows: rows,
    lambda rows: {"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]},
    lambda rows: datasets.Dataset.from_list(rows),
])
def test_python_objects(make):
    task = prepare_classification(make(ROWS), seed=1)
    assert task.label_names == ["neg", "pos"]
    assert len(task.train) + len(task.validation) + len(task.test) == 40


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_files(tmp_path, frame, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    else:
        frame.to_parquet(path)
    loaded = load_frame(str(path))
    assert list(loaded.columns) == ["text", "label"] and len(loaded) == 40


def test_headerless_tsv_with_quotes_is_read_as_data(tmp_path):
    path = tmp_path / "agnews.tsv"
    path.write_text('Stocks fell "sharply" today, said analysts\tBusiness\nThe team won the cup\tSports\n')
    loaded = load_frame(str(path))
    assert len(loaded) == 2 and loaded.iloc[0, 0].startswith('Stocks fell "sharply"')


def test_variable_from_namespace_and_dataset_dict_splits(frame):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(frame.iloc[:30]),
                               "test": datasets.Dataset.from_pandas(frame.iloc[30:])})
    task = prepare_classification("dd", namespace={"dd": dd})
    assert len(task.test) == 10 and len(task.train) + len(task.validation) == 30


def test_given_splits_are_used_as_they_are(frame):
    task = prepare_classification(frame.iloc[:20], frame.iloc[20:30], frame.iloc[30:])
    assert (len(task.train), len(task.validation), len(task.test)) == (20, 10, 10)
    assert task.notes == []


def test_missing_splits_are_seeded_and_stratified(frame):
    a = prepare_classification(frame, seed=3, test_size=0.25)
    b = prepare_classification(frame, seed=3, test_size=0.25)
    assert a.fingerprint == b.fingerprint and len(a.test) == 10
    assert sorted(np.bincount(a.test["label"])) == [5, 5]
    assert prepare_classification(frame, seed=4).fingerprint != a.fingerprint


def test_integer_labels_keep_their_values(frame):
    frame = frame.assign(label=(frame["label"] == "pos").astype(int) * 7)
    task = prepare_classification(frame)
    assert task.labels.values == [0, 7] and task.label_names == ["0", "7"]


def test_columns_are_inferred_or_named():
    frame = pd.DataFrame({"id": range(40), "review": [r["text"] for r in ROWS],
                          "stars": [r["label"] for r in ROWS]})
    task = prepare_classification(frame)
    assert (task.text_column, task.label_column) == ("review", "stars")


@pytest.mark.parametrize("data, kwargs, message", [
    (pd.DataFrame(ROWS), {"text": "body"}, "--text 'body': no such column"),
    (pd.DataFrame(ROWS), {"label": "labl"}, "did you mean label?"),
    (pd.DataFrame({"a": ["x y z"] * 4, "b": ["p q r"] * 4, "label": [0, 1] * 2}), {}, "several text columns"),
    (pd.DataFrame({"text": ["a", "b"] * 10, "p": [0, 1] * 10, "q": [1, 0] * 10}), {}, "several possible label"),
    (pd.DataFrame(columns=["text", "label"]), {}, "--data is empty"),
    ([], {}, "--data is empty"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": ["same"] * 10}), {}, "single class"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": np.linspace(0, 1, 10)}), {}, "continuous"),
    ("/no/such/file.csv", {}, "does not exist"),
    ("missing_var", {}, "no variable named 'missing_var'"),
    ("framee", {}, "did you mean frame?"),
    (42, {}, "cannot use a int"),
])
def test_bad_data_gives_one_line(data, kwargs, message):
    with pytest.raises(UsageError) as info:
        prepare_classification(data, namespace={"frame": pd.DataFrame(ROWS)}, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files(tmp_path):
    bad = tmp_path / "data.parquet"
    bad.write_text("not parquet")
    with pytest.raises(UsageError, match="could not read .* as parquet"):
        prepare_classification(str(bad))
    xlsx = tmp_path / "data.xlsx"
    xlsx.write_bytes(b"PK")
    with pytest.raises(UsageError, match="cannot read data.xlsx"):
        prepare_classification(str(xlsx))


def test_test_labels_must_be_known(frame):
    test = pd.DataFrame({"text": ["x"], "label": ["meh"]})
    with pytest.raises(UsageError, match="label 'meh'.*not among the training labels"):
        prepare_classification(frame, test=test)


# ---- data misread silently ----------------------------------------------

def test_a_csv_row_with_more_fields_than_the_header_is_an_error_naming_the_line(tmp_path):
    # pandas alone would index the first data row by "great" and shift its columns: text 'really', label 1.
    path = tmp_path / "extra.csv"
    path.write_text("text,label\ngreat, really,1\na fine film,1\na dull film,0\n")
    with pytest.raises(UsageError, match=r"extra.csv line 2 has 3 fields but the header has 2; quote texts"):
        load_frame(str(path))
    later = tmp_path / "later.csv"
    later.write_text("text,label\na fine film,1\na dull film,0\nbad, bad,0\n")
    with pytest.raises(UsageError, match=r"--validation: later.csv line 4 has 3 fields"):
        load_frame(str(later), role="--validation")
    tsv = tmp_path / "extra.tsv"
    tsv.write_text("text\tlabel\na\tfine film\t1\na dull film\t0\n")
    with pytest.raises(UsageError, match=r"extra.tsv line 2 has 3 fields"):
        load_frame(str(tsv))


def test_a_quoted_comma_and_a_short_row_are_still_read(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text('text,label\n"great, really",1\na dull film,0\n')
    frame = load_frame(str(path))
    assert frame.to_dict("records") == [{"text": "great, really", "label": 1}, {"text": "a dull film", "label": 0}]


@pytest.mark.parametrize("labels, names, note", [
    ([1, "1", 0, "0"], ["0", "1"], "read them all as integers"),
    ([1, " 1", 0.0, "0"], ["0", "1"], "read them all as integers"),
    (["pos", 1, "neg", 1], ["1", "neg", "pos"], "read them all as text"),
    ([True, "True", False, "False"], ["False", "True"], "read them all as text"),
])
def test_labels_mixing_1_and_quoted_1_are_one_class(labels, names, note):
    frame = pd.DataFrame({"text": [f"film number {i}" for i in range(40)], "label": labels * 10})
    task = prepare_classification(frame, seed=0)
    assert task.label_names == names
    assert any(note in n for n in task.notes), task.notes
    # The same row spelled either way gets the same class id.
    assert task.train["label"].nunique() == len(names)


def test_validation_labels_spelled_differently_match_the_training_classes(frame):
    as_int = frame.assign(label=(frame["label"] == "pos").astype(int))              # 0/1 in a DataFrame
    as_text = as_int.assign(label=as_int["label"].map(lambda v: f" {v}"))         # " 0"/" 1" from a file
    task = prepare_classification(as_int.iloc[:30], as_text.iloc[30:35], as_text.iloc[35:])
    assert task.label_names == ["0", "1"]
    assert list(task.validation["label"]) == list(as_int.iloc[30:35]["label"])
    assert not any("mixes" in n for n in task.notes)


def test_a_dataframe_with_duplicated_column_names_is_one_usage_error():
    frame = pd.DataFrame([["a fine film", 1, 0, "x"]] * 4, columns=["text", "label", "label", "text"])
    with pytest.raises(UsageError, match=r"--data: the table has duplicated column names \('label', 'text'\)"):
        prepare_classification(frame)
    with pytest.raises(UsageError, match="duplicated column names"):
        load_frame("df", namespace={"df": frame}, role="--test")


@pytest.mark.parametrize("labels, message", [
    ([float("inf"), 1.0], "holds infinite numbers"),
    ([{"a": 1}, {"b": 2}], "holds dict values"),
    ([[1], [2]], "holds list values"),
])
def test_labels_that_are_not_class_labels_are_one_usage_error(labels, message):
    frame = pd.DataFrame({"text": [f"film {i}" for i in range(20)], "label": labels * 10})
    with pytest.raises(UsageError, match=message):
        prepare_classification(frame)


def test_text_and_label_naming_one_column_is_one_usage_error(frame):
    with pytest.raises(UsageError, match="--text and --label both name column 'text'"):
        prepare_classification(frame, label="text")


def test_prompt_and_response_naming_one_column_is_one_usage_error():
    from llm_magics.data.sft import prepare_sft
    rows = pd.DataFrame({"prompt": [f"say {i}" for i in range(10)], "response": ["ok"] * 10})
    with pytest.raises(UsageError, match="--prompt and --response both name column 'prompt'"):
        prepare_sft(rows, response="prompt")


def test_a_column_of_chat_messages_beside_the_text_is_never_taken_for_the_labels():
    frame = pd.DataFrame({"text": [f"film {i}" for i in range(12)], "turns": [[{"role": "user", "content": "x"}]] * 12,
                          "a": ["x", "y"] * 6, "b": ["u", "v", "w"] * 4})
    with pytest.raises(UsageError, match="several possible label columns"):
        prepare_classification(frame)
