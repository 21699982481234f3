"""Index folders: never trusted to turn on remote code, checked on load, saved whole, deleted literally."""
from __future__ import annotations

import json
import os
import subprocess

import faiss
import numpy as np
import pandas as pd
import pytest

from llm_magics import api
from llm_magics.errors import UsageError
from llm_magics.retrieval import store
from llm_magics.safe_io import CHECKSUMS, write_manifest

TEXTS = ["The Normans conquered England in 1066.", "Paris is the capital of France.",
         "Cats purr when they are content.", "The Nile flows north.", "Glaciers are slow rivers of ice."]


@pytest.fixture
def wiki(tiny_bert):
    api.index.build(name="wiki", source=pd.DataFrame({"text": TEXTS, "doc": [f"d{i}" for i in range(5)]}),
                    doc_id="doc", model=str(tiny_bert), dtype="float32")
    return store.folder_of("wiki")


def reopen(query="Normans", mode="hybrid"):
    """What a new kernel does: read the folder again."""
    store._opened.clear()
    return api.index.query(name="wiki", query=query, k=2, mode=mode)


def legacy(folder):
    """An index as older versions wrote it: no checksum list (the other checks still apply)."""
    (folder / CHECKSUMS).unlink()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def one_usage_line(shell, capsys, line):
    capsys.readouterr()
    result = shell.run_cell(line)
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if x.strip()]
    assert not result.success and len(lines) == 1 and lines[0].startswith("UsageError:"), lines
    return lines[0]


# ---- the manifest never turns on remote code ---------------------------------------------

def test_a_manifest_asking_for_remote_code_is_refused_unless_the_user_passes_the_flag(wiki, monkeypatch, shell,
                                                                                     capsys):
    manifest = json.loads((wiki / "manifest.json").read_text())
    manifest["trust_remote_code"] = True
    (wiki / "manifest.json").write_text(json.dumps(manifest))
    write_manifest(wiki)          # a colleague's folder: whole, and asking for remote code
    from llm_magics.retrieval import embedder as embedder_module
    asked = []
    real = embedder_module.load_embedder
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a: asked.append(a[3]) or real(*a))
    store._opened.clear()
    line = one_usage_line(shell, capsys, "%index query wiki Normans --mode dense")
    assert "--trust-remote-code" in line and "'wiki'" in line
    shell.user_ns["extra"] = ["more text here"]
    assert "--trust-remote-code" in one_usage_line(shell, capsys, "%index add wiki --from extra")
    assert asked == []            # the encoder was never loaded, let alone with remote code
    hits = api.index.query(name="wiki", query="Normans", k=1, mode="dense", trust_remote_code=True)
    assert len(hits) == 1 and asked == [True]
    assert len(api.index.query(name="wiki", query="Normans", k=1, mode="lexical")) == 1   # no encoder: no code


def test_queries_of_an_ordinary_index_never_pass_remote_code(wiki, monkeypatch):
    from llm_magics.retrieval import embedder as embedder_module
    asked = []
    real = embedder_module.load_embedder
    monkeypatch.setattr(embedder_module, "load_embedder", lambda *a: asked.append(a[3]) or real(*a))
    reopen(mode="dense")
    assert asked == [False]


# ---- damaged files are one UsageError naming the file ------------------------------------

def garble(path, keep=0, size=None):
    data = bytearray(path.read_bytes())
    size = len(data) if size is None else size
    rng = np.random.default_rng(0)
    path.write_bytes(bytes(data[:keep]) + rng.integers(0, 256, size - keep, dtype=np.uint8).tobytes())


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CASES = {
    "random vectors": (lambda f: garble(f / "vectors.faiss"), "vectors.faiss"),
    "truncated vectors": (lambda f: truncate(f / "vectors.faiss"), "vectors.faiss"),
    "manifest not JSON": (lambda f: (f / "manifest.json").write_text("{oops"), "manifest.json"),
    "missing chunks": (lambda f: (f / "chunks.parquet").unlink(), "chunks.parquet is missing"),
    "truncated chunks": (lambda f: truncate(f / "chunks.parquet"), "chunks.parquet"),
    "garbage bm25": (lambda f: [garble(p, keep=0) for p in (f / "bm25").glob("*.npy")], "bm25"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "legacy"])
def test_a_damaged_index_is_one_usage_error_naming_the_file(wiki, case, checksums):
    damage, named = CASES[case]
    if not checksums:
        legacy(wiki)
    damage(wiki)
    with pytest.raises(UsageError) as caught:
        reopen()
    message = str(caught.value)
    assert message.startswith("index 'wiki' is damaged: ") and named in message and "--replace" in message, message


def test_a_changed_byte_under_the_same_size_is_caught_by_the_checksum(wiki):
    path = wiki / "vectors.faiss"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01                  # one bit of one vector: FAISS would read it without complaint
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="vectors.faiss does not match the checksum"):
        reopen()


def test_vectors_of_another_width_or_count_than_the_manifest(wiki):
    legacy(wiki)
    manifest = json.loads((wiki / "manifest.json").read_text())
    other = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    other.add_with_ids(np.ones((5, 16), np.float32), np.arange(5, dtype=np.int64))
    faiss.write_index(other, str(wiki / "vectors.faiss"))
    with pytest.raises(UsageError, match="holds 16-dim vectors where manifest.json says 32"):
        reopen()
    manifest["dim"] = 16
    manifest["chunks"] = 4
    (wiki / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="holds 5 vectors where manifest.json says 4 chunks"):
        reopen()
    manifest["dim"] = "32"
    (wiki / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match=r"manifest.json is not a valid index manifest \(dim is '32'\)"):
        reopen()


def test_bm25_arrays_that_load_but_do_not_hold_together(wiki):
    legacy(wiki)
    data = next((wiki / "bm25").glob("data*.npy"))
    np.save(data, np.zeros(3, np.float32), allow_pickle=False)
    with pytest.raises(UsageError, match="bm25/ cannot be used"):
        reopen()


def test_a_damaged_index_is_listed_with_its_problem_and_can_be_dropped(wiki, shell, capsys):
    truncate(wiki / "vectors.faiss")
    store._opened.clear()
    listed = api.index.list()
    assert "damaged" in listed.loc[listed["name"] == "wiki", "error"].item()
    assert "vectors.faiss" in one_usage_line(shell, capsys, "%index info wiki")
    api.index.drop(name="wiki")
    assert not wiki.exists()


# ---- saves are whole, leftovers are cleaned -------------------------------------------

def test_leftovers_of_interrupted_saves_are_removed_on_the_next_open(wiki):
    root = wiki.parent
    pid = dead_pid()
    (root / f".wiki.new-{pid}-abcd1234").mkdir()
    (root / f".wiki.old-{pid}-efgh5678").mkdir()
    legacy_new = root / ".wiki.new-ijkl9012"              # what earlier versions left
    legacy_new.mkdir()
    os.utime(legacy_new, (0, 0))
    reopen()
    assert sorted(p.name for p in root.iterdir()) == ["wiki"]


def test_killed_between_the_two_renames_the_old_index_comes_back(wiki):
    old = wiki.parent / f".wiki.old-{dead_pid()}-abcd1234"
    wiki.rename(old)
    hits = reopen("Normans", mode="lexical")
    assert hits["source"].iloc[0] == "d0" and wiki.exists() and not old.exists()


def test_a_process_killed_while_saving_leaves_the_old_index_whole(wiki, tmp_path):
    import sys
    import textwrap
    script = textwrap.dedent("""
        import os
        from llm_magics import api
        from llm_magics.retrieval import store
        real = store.write_manifest
        def killed(folder, *args):
            real(folder, *args)          # the new folder is complete: killed just before the swap
            os._exit(9)
        store.write_manifest = killed
        api.index.add(name="wiki", source=["Volcanoes erupt lava."])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert len([p for p in wiki.parent.iterdir() if p.name.startswith(".")]) == 1
    hits = reopen("Volcanoes", mode="lexical")
    assert len(hits) == 0                                          # no chunk of the killed add
    assert store.open_index("wiki").manifest.chunks == 5          # the old index, whole
    assert sorted(p.name for p in wiki.parent.iterdir()) == ["wiki"]


def test_saving_over_an_index_leaves_no_hidden_folder_and_checks_out(wiki, tiny_bert):
    api.index.add(name="wiki", source=["Volcanoes erupt lava."])
    assert sorted(p.name for p in wiki.parent.iterdir()) == ["wiki"]
    files = json.loads((wiki / CHECKSUMS).read_text())["files"]
    assert {"manifest.json", "vectors.faiss", "chunks.parquet"} <= set(files)
    assert any(name.startswith("bm25/") for name in files)
    assert len(reopen("Volcanoes", mode="lexical")) == 1


# ---- a source is matched literally unless --glob ------------------------------------------

def test_delete_matches_a_source_literally_and_globs_only_when_asked(tiny_bert, shell, capsys):
    shell.user_ns["notes"] = pd.DataFrame({"text": ["first note", "second note", "third note"],
                                           "name": ["a[1].txt", "a1.txt", "b.txt"]})
    assert shell.run_cell(f"%index build notes --from notes --doc-id name --model {tiny_bert}").success
    shell.run_cell("%index delete notes 'a[1].txt'")
    sources = set(store.open_index("notes").chunks["source"])
    assert sources == {"a1.txt", "b.txt"}
    line = one_usage_line(shell, capsys, "%index delete notes 'a?.txt'")
    assert "add --glob" in line
    assert shell.run_cell("%index delete notes 'a?.txt' --glob").success
    assert set(store.open_index("notes").chunks["source"]) == {"b.txt"}
