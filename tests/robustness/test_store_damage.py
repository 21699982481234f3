"""A damaged run store never costs a finished run; run ids are never written over."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest

from llm_magics import api, runner
from llm_magics.runs import RunStore
from llm_magics.settings import current


def row(run_id: str, created: float | None = None, **extra) -> dict:
    return {"run_id": run_id, "created": created or time.time(), "method": "probe", "model": "m", "status": "ok",
            "options": {"seed": 0}, "metrics": {"test_accuracy": 0.5}, "artifacts": {}, **extra}


def corrupt(path) -> None:
    """Keep the header, garble the pages: 'database disk image is malformed' or 'file is not a database'."""
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))


def test_run_ids_have_48_random_bits():
    ids = {runner.new_run_id("probe") for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i.split("-", 1)[1]) == 12 for i in ids)


def test_a_taken_run_id_is_refused_not_written_over(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    assert store.record(row("probe-1", metrics={"test_accuracy": 0.9})) is None
    warning = store.record(row("probe-1", metrics={"test_accuracy": 0.1}))
    assert "already recorded" in warning and "not written over" in warning
    assert store.get("probe-1")["metrics"]["test_accuracy"] == 0.9
    assert store.pending_path.exists()
    # the clash stays aside (it is another run), however often the store is written
    store.record(row("probe-2"))
    assert len(store.pending_path.read_text().splitlines()) == 1


def test_a_damaged_store_keeps_the_result_and_the_record(tiny_bert, demo, capsys):
    train, test = demo
    path = current().runs_path
    first = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")
    corrupt(path)
    capsys.readouterr()
    result = api.probe(model=str(tiny_bert), data=train, test=test, dtype="float32")   # no DatabaseError
    assert result.metrics["test_accuracy"] >= 0 and result.run_id
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "could not record" in line]
    assert len(warnings) == 1 and "--repair" in warnings[0] and any("could not record" in n for n in result.notes)
    store = RunStore(path)
    assert json.loads(store.pending_path.read_text())["run_id"] == result.run_id
    # listing shows what it can: the kept-aside record, with one warning line
    listed = store.list()
    assert result.run_id in [r["run_id"] for r in listed]
    assert len([line for line in capsys.readouterr().err.splitlines() if "is damaged" in line]) == 1
    message = store.repair()
    assert "damaged" in message and "1 record(s) kept aside were imported" in message
    assert not store.pending_path.exists()
    assert list(path.parent.glob("runs.sqlite.damaged-*"))          # the damaged file is kept, not deleted
    assert store.get(result.run_id)["metrics"] == result.metrics
    assert first.run_id not in [r["run_id"] for r in store.list()]   # its page was garbled: gone
    assert store.record(row("probe-after")) is None


def test_the_next_write_imports_records_kept_aside(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "runs.sqlite")
    store.record(row("probe-a"))
    real = RunStore._connect

    def locked(self):
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(RunStore, "_connect", locked)      # another kernel held it past the timeout
    warning = store.record(row("probe-b"))
    assert "could not record run 'probe-b' (database is locked)" in warning and "kept in" in warning
    monkeypatch.setattr(RunStore, "_connect", real)
    assert store.record(row("probe-c")) is None
    assert {r["run_id"] for r in store.list()} == {"probe-a", "probe-b", "probe-c"}
    assert not store.pending_path.exists()


def test_one_bad_json_row_does_not_hide_the_rest(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    for i in range(3):
        store.record(row(f"probe-{i}", created=1000 + i))
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET metrics = '{broken' WHERE run_id = 'probe-1'")
        conn.execute("UPDATE runs SET options = '[1, 2]' WHERE run_id = 'probe-2'")
    rows = store.list()
    assert [r["run_id"] for r in rows] == ["probe-2", "probe-1", "probe-0"]
    assert rows[1]["metrics"] == {} and rows[1]["problem"] == "unreadable metrics"
    assert rows[0]["problem"] == "unreadable options"
    frame = store.frame()
    assert len(frame) == 3 and frame["test_accuracy"].notna().sum() == 2


def test_llm_runs_lists_a_damaged_store_and_repair_mends_it(shell, capsys):
    store = RunStore(current().runs_path)
    for i in range(40):
        store.record(row(f"probe-{i:02d}", created=1000 + i, metrics={"test_accuracy": i / 100, "pad": "x" * 300}))
    # damage one page in the middle of the table: the other rows still read
    data = bytearray(store.path.read_bytes())
    page = 4096
    data[3 * page + 200:4 * page] = b"\x00\x13" * ((page - 200) // 2)
    store.path.write_bytes(bytes(data))
    capsys.readouterr()
    frame = shell.run_cell("%llm runs --limit 100").result.frames()["runs"]
    err = capsys.readouterr().err
    assert 0 < len(frame) < 40, len(frame)
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "--repair" in err
    result = shell.run_cell("%llm runs --repair --limit 100")
    out = capsys.readouterr().out
    assert result.success and "readable runs copied into a new one" in out
    assert len(result.result.frames()["runs"]) == len(frame)
    assert "is whole" in (shell.run_cell("%llm runs --repair") and capsys.readouterr().out)


@pytest.mark.parametrize("content", [b"not a database at all" * 10, b"SQLite format 3\x00" + b"\x07" * 5000])
def test_a_store_that_is_not_sqlite_lists_nothing_and_records_aside(tmp_path, content, capsys):
    store = RunStore(tmp_path / "runs.sqlite")
    store.path.write_bytes(content)
    assert store.record(row("probe-x")) is None or store.pending_path.exists()
    assert "probe-x" in [r["run_id"] for r in store.list()]


def test_four_processes_recording_at_once_lose_nothing(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "runs.sqlite"
    script = (
        "import sys, time\n"
        "from llm_magics.runs import RunStore\n"
        "import secrets\n"
        "store = RunStore(sys.argv[1])\n"
        "for i in range(25):\n"
        "    assert store.record({'run_id': 'probe-' + secrets.token_hex(6), 'method': 'probe', 'status': 'ok',\n"
        "                         'metrics': {'i': i}}) is None\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)]) for _ in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    store = RunStore(path)
    assert len(store.list()) == 100 and not store.pending_path.exists()


def test_repair_of_a_store_it_cannot_write_is_one_usage_error(tmp_path, monkeypatch):
    from llm_magics.errors import UsageError
    store = RunStore(tmp_path / "runs.sqlite")
    store.record(row("probe-1"))
    corrupt(store.path)

    def refuse(*args):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("os.replace", refuse)
    with pytest.raises(UsageError, match="could not repair the run store .*Permission denied"):
        store.repair()
