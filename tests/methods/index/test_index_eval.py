"""`%index eval`: hit@k and the rank per query, kept with the run, paired across runs by the query text."""
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.retrieval import scoring
from llm_magics.runs import predictions
from llm_magics.runs.stats import item_id

DOCS = pd.DataFrame({
    "id": [f"doc{i}" for i in range(8)],
    "text": ["The Normans conquered England in 1066 after the Battle of Hastings.",
             "Paris is the capital of France and sits on the Seine.",
             "Cats purr when they are content and knead soft blankets.",
             "The Nile flows north into the Mediterranean Sea.",
             "The Amazon carries more water than any other river.",
             "Mount Everest is the highest mountain above sea level.",
             "Honey bees dance to tell the hive where flowers are.",
             "The Pacific is the largest and deepest ocean on Earth."],
})
QUERIES = pd.DataFrame({
    "question": ["who conquered England in 1066", "capital of France on the Seine", "why do cats purr",
                 "which river flows north into the Mediterranean", "river that carries the most water",
                 "highest mountain above sea level", "how do bees tell the hive about flowers",
                 "largest and deepest ocean", "a question about nothing in particular"],
    "answer": [*DOCS["id"], "doc0"],
})


@pytest.fixture
def wiki(tiny_bert):
    api.index.build(name="facts", source=DOCS, doc_id="id", model=str(tiny_bert), dtype="float32")
    return "facts"


def evaluate(queries, **kwargs):
    return api.index.eval(name="facts", query=queries, text="question", relevant="answer", **kwargs)


def test_per_query_hits_and_ranks_from_a_search_frame():
    hits = pd.DataFrame({"query_id": [0, 0, 0, 1, 1, 1], "rank": [1, 2, 3, 1, 2, 3],
                         "source": ["b", "a", "c", "x", "y", "z"]})
    frame = scoring.per_query(["q0", "q1"], scoring.relevant_sets(["a", ["z", "b"]]), hits)
    assert frame["correct"].tolist() == [1.0, 1.0] and frame["rank"].tolist() == [2, 3]
    assert frame["score"].tolist() == pytest.approx([0.5, 1 / 3]) and frame["prediction"].tolist() == ["b", "x"]
    missed = scoring.per_query(["q0", "q1"], scoring.relevant_sets(["d", None]), hits)
    assert missed["correct"].tolist() == [0.0, 0.0] and missed["rank"].isna().all() and (missed["score"] == 0).all()
    assert scoring.metrics(frame, 3) == {"hit_at_k": 1.0, "mrr_at_k": pytest.approx(0.4167, abs=1e-4), "k": 3,
                                         "queries": 2}


def test_eval_keeps_one_row_per_query_with_the_run_and_they_pair_across_a_reordered_frame(wiki, store):
    result = evaluate(QUERIES, k=3, mode="lexical")
    kept = result.predictions
    assert len(kept) == len(QUERIES) and kept["item_id"].tolist() == [item_id(q) for q in QUERIES["question"]]
    assert set(kept["correct"]) <= {0.0, 1.0} and ((kept["rank"] >= 1) & (kept["rank"] <= 3) | kept["rank"].isna()).all()
    assert result.metrics["hit_at_k"] == pytest.approx(kept["correct"].mean(), abs=1e-4) and result.metrics["k"] == 3
    assert kept["correct"].iloc[0] == 1.0 and kept["rank"].iloc[0] == 1     # the Normans query finds its document
    record = store.get(result.run_id)
    on_disk = predictions.load(record["artifacts"][predictions.FILE_KEY])
    pd.testing.assert_frame_equal(on_disk, kept)

    shuffled = evaluate(QUERIES.sample(frac=1, random_state=3).reset_index(drop=True), k=3, mode="lexical")
    same = api.compare_paired(result.run_id, shuffled)
    assert same.paired.shared == len(QUERIES) and same.paired.difference.mean == 0
    assert same.a_mean == pytest.approx(result.metrics["hit_at_k"], abs=1e-4) == shuffled.metrics["hit_at_k"]


def test_paired_compare_of_two_index_runs_gives_a_difference_with_an_interval(wiki):
    many = QUERIES.iloc[:8]
    k1 = evaluate(many, k=1, mode="dense")
    k8 = evaluate(many, k=8, mode="dense")
    assert k8.metrics["hit_at_k"] == 1.0          # eight documents: every answer is in the top 8
    assert k1.metrics["hit_at_k"] < 1.0           # the tiny random encoder misses some at k = 1
    compared = api.compare_paired(k8, k1, names=("k8", "k1"))
    d = compared.paired.difference
    assert d.mean == pytest.approx(1.0 - k1.metrics["hit_at_k"])
    assert d.low <= d.mean <= d.high and compared.paired.mcnemar_p is not None
    assert compared.paired.a_only == round(8 * d.mean) and compared.paired.b_only == 0
    by_rank = api.compare_paired(k8, k1, metric="score")      # MRR: the reciprocal ranks (fractions), paired
    assert by_rank.paired.mcnemar_p is None and by_rank.paired.shared == 8
    assert by_rank.a_mean == pytest.approx(k8.metrics["mrr_at_k"], abs=1e-4) and by_rank.paired.difference.mean > 0


def test_eval_mistakes_are_usage_errors(wiki):
    with pytest.raises(UsageError, match="no such column"):
        api.index.eval(name="facts", query=QUERIES, text="question", relevant="gold")
    with pytest.raises(UsageError, match="no query names a source in index 'facts'.*doc"):
        evaluate(QUERIES.assign(answer="elsewhere"))
    with pytest.raises(UsageError, match="takes a DataFrame"):
        api.index.eval(name="facts", query=["who conquered England"], relevant="answer")


def test_eval_in_a_shell_then_compare_paired(shell, wiki):
    shell.user_ns["qs"] = QUERIES
    shell.run_line_magic("index", "eval facts qs --text question --relevant answer -k 1 --mode lexical --out a")
    shell.run_line_magic("index", "eval facts qs --text question --relevant answer -k 4 --mode lexical --out b")
    a, b = shell.user_ns["a"], shell.user_ns["b"]
    assert a.metrics["k"] == 1 and b.metrics["k"] == 4
    compared = repr(shell.run_line_magic("llm", f"compare {b.run_id} {a.run_id} --paired"))
    assert "McNemar" in compared and f"{len(QUERIES)} shared rows" in compared
    by_rank = shell.run_line_magic("llm", "compare b a --paired --metric score")   # variables holding Results
    assert by_rank.metric == "score" and by_rank.a_mean == pytest.approx(b.metrics["mrr_at_k"], abs=1e-4)
