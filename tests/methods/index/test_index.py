"""`%index`: documents → chunks → FAISS + BM25 on disk → top-k chunks, on a tiny config-built encoder."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.retrieval import chunking, documents, store, vectors

FACTS = {
    "normans.txt": "The Normans conquered England in 1066 after the Battle of Hastings.",
    "paris.md": "# Paris\n\nParis is the capital of France and sits on the Seine.",
    "cats.html": "<html><head><title>Cats</title><style>p{color:red}</style></head>"
                 "<body><p>Cats purr when they are content.</p><script>var hidden = 1;</script></body></html>",
    "rivers.csv": "topic,text\nnile,The Nile flows north into the Mediterranean.\namazon,The Amazon carries the most water.\n",
}


@pytest.fixture
def docs(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in FACTS.items():
        (folder / name).write_text(text)
    (folder / ".hidden.txt").write_text("never indexed")
    return folder


def build(tiny_bert, source, name="wiki", **kwargs):
    return api.index.build(name=name, source=str(source) if isinstance(source, Path) else source,
                           model=str(tiny_bert), dtype="float32", **kwargs)


# ---- chunking and documents ------------------------------------------------------------------

def test_windows_cover_the_tokens_with_the_asked_overlap():
    assert chunking.windows(5, 8, 2) == [(0, 5)]
    spans = chunking.windows(20, 8, 3)
    assert spans[0] == (0, 8) and spans[-1][1] == 20
    assert all(b[0] == a[1] - 3 for a, b in zip(spans, spans[1:]))
    assert all(end - start <= 8 for start, end in spans)


def test_chunks_are_exact_spans_of_the_document_with_their_token_ids(tiny_bert):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    text = " ".join(f"word{i} is here." for i in range(40))
    docs = pd.DataFrame({"text": [text, "short one"], "source": ["long", "short"]})
    chunks = chunking.chunk_documents(docs, tokenizer, size=16, overlap=4)
    frame = chunks.frame
    assert frame["source"].tolist().count("short") == 1 and frame["source"].tolist().count("long") > 3
    for row, ids in zip(frame.itertuples(), chunks.ids):
        original = text if row.source == "long" else "short one"
        assert original[row.start:row.end] == row.text and 0 < len(ids) <= 16
    long_rows = frame[frame["source"] == "long"]
    assert long_rows["position"].tolist() == list(range(len(long_rows)))
    assert (long_rows["start"].diff().dropna() > 0).all() and long_rows["end"].iloc[-1] == len(text)


def test_chunk_size_is_capped_at_what_the_encoder_reads_and_overlap_must_fit():
    assert chunking.check_sizes(100, 10, 62) == (62, ["--chunk 100 is more than the encoder reads; chunks hold 62 tokens"])
    with pytest.raises(UsageError, match="--overlap 50 must be smaller than --chunk 50"):
        chunking.check_sizes(50, 50, 62)


def test_documents_from_a_folder_of_text_markdown_html_and_tables(docs):
    notes = []
    frame = documents.load_documents(str(docs), None, notes=notes)
    sources = set(frame["source"])
    assert {str(docs / "normans.txt"), str(docs / "paris.md"), str(docs / "cats.html"),
            f"{docs / 'rivers.csv'}#0", f"{docs / 'rivers.csv'}#1"} == sources
    html = frame.loc[frame["source"] == str(docs / "cats.html"), "text"].item()
    assert "Cats purr" in html and "hidden" not in html and "color" not in html
    assert not any("never indexed" in t for t in frame["text"])


def test_documents_from_a_dataframe_use_the_doc_id_column():
    df = pd.DataFrame({"title": ["a", "b"], "body": ["first text here", "second text here"]})
    frame = documents.load_documents("df", {"df": df}, text="body", doc_id="title")
    assert frame["source"].tolist() == ["a", "b"] and frame["text"].tolist() == df["body"].tolist()
    named = documents.load_documents("df", {"df": df}, text="body")
    assert named["source"].tolist() == ["df#0", "df#1"]


def test_documents_from_two_unnamed_objects_get_distinct_sources(tiny_bert):
    first = documents.load_documents(["one text", "two text"], None)
    second = documents.load_documents(["three text", "four text"], None)
    assert first["source"].str.fullmatch(r"list-[0-9a-f]{8}#[01]").all()
    assert not set(first["source"]) & set(second["source"])
    frame = pd.DataFrame({"text": ["five text"]})
    assert documents.load_documents(frame, {"_": frame, "notes": frame})["source"].tolist() == ["notes#0"]
    build(tiny_bert, ["one text", "two text"])
    added = api.index.add(name="wiki", source=["three text", "four text"])   # added, not replacing the first two
    assert added.metrics["index_documents"] == 4 and not added.notes


# ---- build, query, add, delete ----------------------------------------------------------------

def test_build_then_query_finds_the_document_and_records_the_run(tiny_bert, docs, store):
    result = build(tiny_bert, docs)
    assert result.metrics["documents"] == 5 and result.metrics["chunks"] == 5
    assert result.rows_per_s > 0 and result.tokens_per_s > 0 and result.dtype == "float32"
    assert store.get(result.run_id)["metrics"]["chunks"] == 5
    hits = api.index.query(name="wiki", query="The Normans conquered England in 1066", k=3)
    assert list(hits.columns) == ["rank", "score", "text", "source", "position"]
    assert hits["rank"].tolist() == [1, 2, 3] and hits["source"].iloc[0].endswith("normans.txt")
    assert hits.attrs["mode"] == "hybrid"


@pytest.mark.parametrize("candidates, pool", [(None, 50), (2, 3), (60, 60)])
def test_hybrid_takes_the_candidates_asked_for_at_least_k(tiny_bert, docs, monkeypatch, candidates, pool):
    build(tiny_bert, docs)
    asked = []
    search = vectors.search
    monkeypatch.setattr(vectors, "search", lambda index, q, k: asked.append(k) or search(index, q, k))
    api.index.query(name="wiki", query="Paris", k=3, mode="hybrid", candidates=candidates)
    assert asked == [pool]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_each_search_mode_ranks_an_exact_text_first(tiny_bert, docs, mode):
    build(tiny_bert, docs)
    hits = api.index.query(name="wiki", query="Paris is the capital of France and sits on the Seine.", k=2,
                           mode=mode)
    assert hits["source"].iloc[0].endswith("paris.md")
    assert len(hits) == (1 if mode == "lexical" else 2)  # BM25 returns only chunks sharing a word


def test_a_list_of_queries_is_batched_into_one_frame(tiny_bert, docs):
    build(tiny_bert, docs)
    queries = ["The Nile flows north into the Mediterranean.", "Cats purr when they are content."]
    hits = api.index.query(name="wiki", query=queries, k=2)
    assert hits["query"].tolist() == [queries[0]] * 2 + [queries[1]] * 2
    assert hits.groupby("query")["rank"].apply(list).tolist() == [[1, 2], [1, 2]]
    frame = pd.DataFrame({"q": queries})
    assert api.index.query(name="wiki", query=frame, text="q", k=1)["source"].str.contains("rivers|cats").all()


def test_add_then_query_finds_the_new_document_and_delete_removes_it(tiny_bert, docs, tmp_path):
    build(tiny_bert, docs)
    extra = tmp_path / "extra.txt"
    extra.write_text("Volcanoes erupt molten rock called lava from deep underground.")
    added = api.index.add(name="wiki", source=str(extra))
    assert added.metrics["index_documents"] == 6
    hits = api.index.query(name="wiki", query="volcanoes lava erupt", k=1)
    assert hits["source"].item() == str(extra)
    again = api.index.add(name="wiki", source=str(extra))      # same source: replaced, not duplicated
    assert again.metrics["index_chunks"] == added.metrics["index_chunks"] and "replaced" in " ".join(again.notes)
    gone = api.index.delete(name="wiki", source=str(extra))
    assert gone["removed_chunks"] == 1 and gone["documents"] == 5
    hits = api.index.query(name="wiki", query="volcanoes lava erupt", k=5)
    assert str(extra) not in set(hits["source"])


@pytest.mark.parametrize("kind, precision", [("hnsw", "float32"), ("ivf", "float32"), ("flat", "float16"),
                                             ("hnsw", "float16"), ("ivf", "float16")])
def test_kinds_and_precisions_build_query_and_delete(tiny_bert, kind, precision):
    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    texts = [" ".join(rng.choice(words, 6)) + f" item{i}" for i in range(120)]
    frame = pd.DataFrame({"text": texts, "id": [f"doc{i}" for i in range(120)]})
    result = build(tiny_bert, frame, doc_id="id", kind=kind, nlist=2 if kind == "ivf" else None,
                   nprobe=2 if kind == "ivf" else None, precision=precision)
    assert result.info["kind"] == kind and result.info["params"]["precision"] == precision
    hits = api.index.query(name="wiki", query=texts[7], k=3, mode="dense")
    assert hits["source"].iloc[0] == "doc7"
    api.index.delete(name="wiki", source="doc7")
    hits = api.index.query(name="wiki", query=texts[7], k=3, mode="dense")
    assert "doc7" not in set(hits["source"]) and len(hits) == 3
    assert store.open_index("wiki").dense.ntotal == 119


def test_a_rebuild_of_the_same_documents_reuses_the_cached_vectors(tiny_bert, docs):
    first = build(tiny_bert, docs)
    from llm_magics.models import cached
    calls = []
    hooks = [m.model.register_forward_hook(lambda *a: calls.append(1)) for m in cached()]
    try:
        again = build(tiny_bert, docs, kind="hnsw", replace=True)
        fresh = build(tiny_bert, docs, kind="hnsw", replace=True, cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert "the encoder did not run" in " ".join(again.notes) and len(calls) == 1   # only the --no-cache build
    assert again.metrics["chunks"] == first.metrics["chunks"] == fresh.metrics["chunks"]
    assert api.index.query(name="wiki", query=FACTS["normans.txt"], k=1, mode="dense")["source"].item().endswith(
        "normans.txt")


def test_auto_picks_flat_for_a_small_corpus_and_hnsw_past_the_threshold(tiny_bert, docs):
    result = build(tiny_bert, docs, kind="auto")
    assert result.info["kind"] == "flat" and "--kind auto chose flat" in " ".join(result.notes)
    assert vectors.resolve_kind("auto", vectors.AUTO_HNSW) == "hnsw"
    assert vectors.resolve_kind("auto", vectors.AUTO_IVF) == "ivf"


def test_the_folder_holds_faiss_parquet_json_and_npy_only_and_no_pickle(tiny_bert, docs):
    build(tiny_bert, docs)
    folder = store.folder_of("wiki")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert {"manifest.json", "vectors.faiss", "chunks.parquet"} <= set(files)
    assert all(f.endswith((".json", ".faiss", ".parquet", ".npy")) for f in files), files
    for npy in folder.rglob("*.npy"):
        np.load(npy, allow_pickle=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["chunks"] == 5 and manifest["dim"] == 32 and manifest["params"]["kind"] == "flat"
    assert folder.parent == Path(os.environ["LLM_MAGICS_HOME"]) / "indexes"


def test_a_failed_save_leaves_the_previous_index_whole(tiny_bert, docs, tmp_path, monkeypatch):
    build(tiny_bert, docs)
    extra = tmp_path / "extra.txt"
    extra.write_text("Glaciers are slow rivers of ice.")

    def broken(*args):
        raise RuntimeError("disk full")
    monkeypatch.setattr(store.faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        api.index.add(name="wiki", source=str(extra))
    monkeypatch.undo()
    index = store.open_index("wiki")    # the session's copy too, not only the folder
    assert index.manifest.documents == 5 and str(extra) not in set(index.chunks["source"])
    assert index.dense.ntotal == 5
    assert [p.name for p in store.root().iterdir() if p.name.startswith(".")] == []


def test_a_change_that_fails_midway_leaves_the_open_index_whole(tiny_bert, docs, monkeypatch):
    build(tiny_bert, docs)
    before = store.open_index("wiki")
    normans = str(docs / "normans.txt")

    def broken(*args):
        raise RuntimeError("faiss failed")
    monkeypatch.setattr(store.vec, "add", broken)
    with pytest.raises(RuntimeError, match="faiss failed"):
        before.upsert(before.chunks[before.chunks["source"] == normans].drop(columns="id"), np.zeros((1, 32)))
    index = store.open_index("wiki")
    assert index is before and index.dense.ntotal == 5 and normans in set(index.chunks["source"])
    assert index.manifest.chunks == 5 and index.search(["Normans"], 1, mode="lexical")["source"].item() == normans


def test_deleting_a_source_that_matches_nothing_changes_nothing(tiny_bert, docs, monkeypatch):
    build(tiny_bert, docs)
    index = store.open_index("wiki")
    stamp, lexical, updated = store._stamp(index.folder), index.lexical, index.manifest.updated
    monkeypatch.setattr(store.Lexical, "build", lambda *a: pytest.fail("BM25 rebuilt"))
    with pytest.raises(UsageError, match=r"no document with source 'nope\*' \(sources look like: "):
        api.index.delete(name="wiki", source="nope*")
    assert store._stamp(index.folder) == stamp
    assert index.lexical is lexical and index.manifest.updated == updated


def test_the_manifest_keeps_the_encoders_dtype_and_queries_load_it_so(tiny_bert, docs, monkeypatch):
    build(tiny_bert, docs)   # float32, while this CPU's default is bfloat16 where it has native bf16
    manifest = json.loads((store.folder_of("wiki") / "manifest.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["trust_remote_code"] is False
    from llm_magics.retrieval import embedder as embedder_module
    loads = []
    real = embedder_module.load_embedder
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a: loads.append(a[2:]) or real(*a))
    api.index.query(name="wiki", query="Normans", k=1, mode="dense")
    api.index.add(name="wiki", source=["Glaciers are slow rivers of ice."])
    assert loads == [(torch.float32, False)] * 2


def test_ivf_with_too_few_chunks_fails_before_encoding_and_writes_nothing(tiny_bert, docs, monkeypatch):
    from llm_magics.retrieval.embedder import Embedder
    from llm_magics.settings import current
    monkeypatch.setattr(Embedder, "encode_ids", lambda *a, **k: pytest.fail("encoded before the check"))
    with pytest.raises(UsageError, match=r"--kind ivf needs at least --nlist \(50\) vectors to train, got 5"):
        build(tiny_bert, docs, kind="ivf", nlist=50)
    assert not store.exists("wiki") and list(store.root().iterdir()) == []
    features = current().subdir("features")
    assert [p for p in features.rglob("*") if p.is_file()] == []


def test_list_info_and_drop(tiny_bert, docs):
    assert api.index().empty
    build(tiny_bert, docs)
    build(tiny_bert, ["a second index with one text"], name="notes")
    listing = api.index.list()
    assert listing["name"].tolist() == ["notes", "wiki"] and listing["chunks"].tolist() == [1, 5]
    info = api.index.info(name="wiki")
    assert info["documents"] == 5 and info["model"] == str(tiny_bert) and info["size_mb"] > 0
    api.index.drop(name="notes")
    assert api.index.list()["name"].tolist() == ["wiki"]


def test_the_index_result_can_query(tiny_bert, docs):
    result = build(tiny_bert, docs)
    assert result.query("Cats purr when they are content.", k=1)["source"].item().endswith("cats.html")


# ---- mistakes: one line each, nothing recorded -----------------------------------------------------

def one_usage_line(shell, capsys, cell: str) -> str:
    result = shell.run_cell(cell)
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
    assert not result.success and len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]


@pytest.mark.parametrize("line, message", [
    ("%index build ../escape --from {docs}", "is a path; an index name is a plain name"),
    ("%index build a/b --from {docs}", "is a path"),
    ("%index query nosuch 'hello'", "no index named 'nosuch'"),
    ("%index build wiki --from {docs}/missing.txt", "does not exist"),
    ("%index build wiki --from {docs} --chunk 10 --overlap 10", "--overlap 10 must be smaller than --chunk 10"),
    ("%index bulid wiki", "unknown command 'bulid'; did you mean build?"),
    ("%index buld wiki --from docs/", "unknown command 'buld'; did you mean build?"),
    ("%index build wiki --from {docs} --kind annoy", "--kind 'annoy' is not valid"),
])
def test_mistakes_are_one_usage_line_and_record_nothing(shell, capsys, store, docs, tiny_bert, line, message):
    text = one_usage_line(shell, capsys, line.format(docs=docs) + f" --model {tiny_bert}"
                          if line.startswith("%index build") else line)
    assert message in text
    assert store.list() == []


def test_rebuilding_without_replace_and_deleting_an_unknown_source_are_usage_errors(shell, capsys, store, docs,
                                                                                  tiny_bert):
    build(tiny_bert, docs)
    capsys.readouterr()
    assert "pass --replace" in one_usage_line(shell, capsys, f"%index build wiki --from {docs} --model {tiny_bert}")
    assert "no document with source 'nope.txt'" in one_usage_line(shell, capsys, "%index delete wiki nope.txt")
    assert len(store.list()) == 1   # only the first build


def test_magic_build_and_query_in_a_shell(shell, capsys, docs, tiny_bert):
    shell.user_ns["frame"] = pd.DataFrame({"text": ["Mountains are tall.", "Oceans are deep."]})
    assert shell.run_cell(f"%index build geo --from frame --model {tiny_bert} --out built").success
    assert shell.user_ns["built"].metrics["chunks"] == 2
    hits = shell.run_cell('%index query geo "Oceans are deep." -k 1').result
    assert hits["text"].item() == "Oceans are deep."
    shell.user_ns["qs"] = ["Mountains are tall.", "Oceans are deep."]
    both = shell.run_cell("%index query geo qs -k 1").result
    assert both["text"].tolist() == ["Mountains are tall.", "Oceans are deep."]
    listing = shell.run_cell("%index").result
    assert listing["name"].tolist() == ["geo"]
    capsys.readouterr()


# ---- a real kernel: built in one, queried in a fresh one --------------------------------------------

def _in_a_fresh_kernel(env: dict, code: str) -> str:
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        messages = []
        reply = kc.execute_interactive(code, timeout=180, output_hook=messages.append)
        errors = [m["content"] for m in messages if m["msg_type"] == "error"]
        assert reply["content"]["status"] == "ok", (reply["content"], errors)
        return "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.kernel
def test_an_index_survives_a_kernel_restart(tmp_path, docs, tiny_bert):
    env = {**os.environ, "LLM_MAGICS_HOME": str(tmp_path / "kernel-home"), "OMP_NUM_THREADS": "1"}
    first = _in_a_fresh_kernel(env, "%load_ext llm_magics\nimport os\n"
                                    f"%index build wiki --from {docs} --model {tiny_bert} --dtype float32 --out b\n"
                                    "print('PID', os.getpid(), b.metrics['chunks'])")
    second = _in_a_fresh_kernel(env, "%load_ext llm_magics\nimport os\n"
                                     "hits = %index query wiki 'The Normans conquered England in 1066' -k 1\n"
                                     "print('PID', os.getpid(), 'TOP', hits['source'].item())")
    pid_one, chunks = first.split("PID ")[1].split()[:2]
    pid_two, top = second.split("PID ")[1].split(" TOP ")
    assert chunks == "5" and pid_one != pid_two.strip()
    assert top.strip() == str(docs / "normans.txt")
