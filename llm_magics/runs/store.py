"""Every run, recorded in one SQLite file that survives kernel restarts.

A run's record is never lost to the store: when `runs.sqlite` cannot take it
(damaged, locked past the timeout, read-only, a run id already taken) the
record goes to a side file beside it (`runs.sqlite.pending.jsonl`), `record`
returns one warning line, and the next successful write or
`%llm runs --repair` imports it. Reading lists what it can: rows of a damaged
file one by one, the side file's records, and a row whose JSON fields are
unreadable is shown with a `problem` rather than hiding the others. A record
never replaces another: a run id already in the store is refused.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = {
    "run_id": "TEXT PRIMARY KEY",
    "created": "REAL",
    "method": "TEXT",           # the registered method: "rlhf"
    "command": "TEXT",          # its subcommand, NULL for the main one: "dpo"
    "model": "TEXT",
    "status": "TEXT",
    "options": "TEXT",          # JSON
    "data_fingerprint": "TEXT",
    "metrics": "TEXT",          # JSON, flat
    "trainable_params": "INTEGER",
    "total_params": "INTEGER",
    "wall_s": "REAL",
    "rows_per_s": "REAL",
    "tokens_per_s": "REAL",
    "peak_mem_bytes": "INTEGER",
    "device": "TEXT",
    "dtype": "TEXT",
    "artifacts": "TEXT",        # JSON {name: path}
    "sweep_id": "TEXT",         # the %llm sweep that ran it, else NULL
    "parent_id": "TEXT",        # the --seeds aggregate this run is one seed of, else NULL
}
JSON_COLUMNS = ("options", "metrics", "artifacts")
from ..records import RECORD_KEYS, run_title  # noqa: E402 - the fields Result.record() gives: one list for both
assert list(COLUMNS) == ["run_id", "created", *RECORD_KEYS[1:]], "run store columns and Result.RECORD_KEYS differ"


def warn(line: str) -> None:
    """One warning line on stderr (no traceback, no warnings-module source line)."""
    sys.stderr.write(f"llm-magics: {line}\n")
    sys.stderr.flush()


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def pending_path(self) -> Path:
        """Records the store could not take, one JSON object a line, waiting to be imported."""
        return self.path.with_name(self.path.name + ".pending.jsonl")

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.row_factory = sqlite3.Row
            columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
            # Older stores may miss columns added since: add them rather than fail.
            have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
            for name, kind in COLUMNS.items():
                if name not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind.replace(' PRIMARY KEY', '')}")
            if "command" not in have:
                _split_commands(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # ---- writing ---------------------------------------------------------------------------
    @staticmethod
    def _row(row: dict[str, Any]) -> dict[str, Any]:
        row = _with_command(row)   # a side-file record of an older version joined the command to the method
        row = {k: row.get(k) for k in COLUMNS}
        row["created"] = row["created"] or time.time()
        for key in JSON_COLUMNS:
            if not isinstance(row[key], str):
                row[key] = json.dumps(row[key] or {}, default=str)
        return row

    def _insert(self, conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        conn.execute(f"INSERT INTO runs ({names}) VALUES ({marks})", list(row.values()))   # never replaces

    def record(self, row: dict[str, Any]) -> str | None:
        """Insert one run. Never raises for the store's sake: a record the store cannot take is kept
        in the side file and the returned line says so (None when it was recorded)."""
        row = self._row(row)
        try:
            with closing(self._connect()) as conn, conn:
                self._insert(conn, row)
        except sqlite3.IntegrityError:
            return self._aside(row, f"run id {row['run_id']!r} is already recorded in {self.path}; "
                                    "the new record was not written over it")
        except (sqlite3.Error, OSError) as exc:
            return self._aside(row, f"the run store {self.path} could not record run {row['run_id']!r} "
                                    f"({_reason(exc)})")
        with contextlib.suppress(sqlite3.Error, OSError):
            if self.pending_path.exists():
                self.import_pending()    # the next write brings earlier records in
        return None

    def _aside(self, row: dict[str, Any], why: str) -> str:
        try:
            with self._locked():
                with open(self.pending_path, "a") as handle:
                    handle.write(json.dumps(row, default=str) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as exc:
            return f"{why}; it could not be kept aside either ({_reason(exc)}): the Result holds the only copy"
        return f"{why}; the record is kept in {self.pending_path.name}: `%llm runs --repair` imports it"

    @contextlib.contextmanager
    def _locked(self):
        """One writer of the side file at a time (kernels sharing the store)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _pending_rows(self) -> list[dict[str, Any]]:
        rows = []
        try:
            lines = self.pending_path.read_text().splitlines()
        except OSError:
            return rows
        for line in lines:
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and item.get("run_id"):
                    rows.append(self._row(item))
        return rows

    def import_pending(self) -> tuple[int, int]:
        """Bring the side file's records into the store: (imported, left aside). A record whose run id
        the store holds with other content stays aside (it is never written over)."""
        with self._locked():
            rows = self._pending_rows()
            if not rows:
                with contextlib.suppress(OSError):
                    self.pending_path.unlink()
                return 0, 0
            left = []
            imported = 0
            with closing(self._connect()) as conn, conn:
                for row in rows:
                    try:
                        self._insert(conn, row)
                        imported += 1
                    except sqlite3.IntegrityError:
                        have = conn.execute("SELECT created, method FROM runs WHERE run_id = ?",
                                            (row["run_id"],)).fetchone()
                        if not have or (have[0], have[1]) != (row["created"], row["method"]):
                            left.append(row)     # a different run under the same id: kept, not merged
            if left:
                scratch = self.pending_path.with_name(self.pending_path.name + ".tmp")
                scratch.write_text("".join(json.dumps(r, default=str) + "\n" for r in left))
                os.replace(scratch, self.pending_path)
            else:
                self.pending_path.unlink()
        return imported, len(left)

    def repair(self) -> str:
        """Make the store whole again: a damaged file is moved aside (kept, never deleted), a new one
        is made from every row that can still be read, and the side file's records are imported."""
        try:
            return self._repair()
        except (OSError, sqlite3.Error) as exc:
            from ..errors import UsageError
            raise UsageError(f"could not repair the run store {self.path} ({_reason(exc)}); check that its "
                             "folder is writable and not full") from None

    def _repair(self) -> str:
        problem = self._damage()
        salvaged = 0
        if problem:
            rows, _ = self._read_rows()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
            os.replace(self.path, kept)
            for suffix in ("-journal", "-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.replace(side, kept.with_name(kept.name + suffix))
            with closing(self._connect()) as conn, conn:
                for row in rows:
                    with contextlib.suppress(sqlite3.IntegrityError):
                        self._insert(conn, self._row(row))
                        salvaged += 1
        imported, left = self.import_pending() if self.pending_path.exists() else (0, 0)
        parts = [f"the run store {self.path} was damaged ({problem}): moved to {kept.name}, "
                 f"{salvaged} readable runs copied into a new one" if problem else
                 f"the run store {self.path} is whole"]
        parts.append(f"{imported} record(s) kept aside were imported")
        if left:
            parts.append(f"{left} stay in {self.pending_path.name}: their run ids are taken by other runs")
        return "; ".join(parts)

    def _damage(self) -> str | None:
        if not self.path.exists():
            return None
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                answer = [r[0] for r in conn.execute("PRAGMA integrity_check")]
                conn.execute("SELECT count(*) FROM runs").fetchone()
        except sqlite3.Error as exc:
            return _reason(exc)
        return None if answer == ["ok"] else "; ".join(answer[:2])

    # ---- reading ---------------------------------------------------------------------------
    def _read_rows(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every row that can be read, and what went wrong (None: nothing)."""
        if not self.path.exists():
            return [], None
        try:
            conn = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            return [], _reason(exc)
        with closing(conn):
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute("SELECT * FROM runs")], None
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return [], None
                problem = _reason(exc)
            except sqlite3.Error as exc:
                problem = _reason(exc)
            return self._salvage(conn), problem

    @staticmethod
    def _salvage(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        """Rows of a damaged table, one at a time, skipping the ones that cannot be read."""
        try:
            last = conn.execute("SELECT max(rowid) FROM runs").fetchone()[0] or 0
        except sqlite3.Error:
            last = 100_000
        rows, misses = [], 0
        for rowid in range(1, last + 1):
            try:
                row = conn.execute("SELECT * FROM runs WHERE rowid = ?", (rowid,)).fetchone()
            except sqlite3.Error:
                misses += 1
                if misses > 1000 and not rows:
                    break
                continue
            if row is not None:
                rows.append(dict(row))
        return rows

    def get(self, run_id: str) -> dict[str, Any] | None:
        return next((row for row in self.list() if row["run_id"] == run_id), None)

    def list(self, limit: int | None = None, method: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first: what the store can read, plus records waiting in the side file.
        Damage is one warning line, not an error."""
        rows, problem = self._read_rows()
        seen = {r["run_id"] for r in rows}
        pending = [r for r in self._pending_rows() if r["run_id"] not in seen]
        if problem:
            warn(f"the run store {self.path} is damaged ({problem}); showing the {len(rows)} run(s) that could "
                 "be read" + (f" and {len(pending)} kept aside" if pending else "")
                 + ": `%llm runs --repair` rebuilds it")
        rows = [_decode(_with_command(r)) for r in rows + pending]
        if method:   # the method ("rlhf") or the method with its command ("rlhf dpo")
            rows = [r for r in rows if method in (r.get("method"), run_title(r.get("method"), r.get("command")))]
        rows.sort(key=lambda r: r.get("created") or 0, reverse=True)
        return rows[:int(limit)] if limit else rows

    def delete(self, run_id: str) -> None:
        with closing(self._connect()) as conn, conn:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def frame(self, limit: int | None = None, method: str | None = None) -> pd.DataFrame:
        """Runs as a table, metrics spread into columns."""
        rows = self.list(limit=limit, method=method)
        if not rows:
            return pd.DataFrame(columns=["run_id", "method", "model"])
        flat = []
        for row in rows:
            item = {k: v for k, v in row.items() if k not in JSON_COLUMNS}
            item["method"] = run_title(row.get("method"), row.get("command"))   # as the user typed it
            item.update(row["metrics"])
            flat.append(item)
        frame = pd.DataFrame(flat)
        created = pd.to_numeric(frame["created"], errors="coerce")
        frame["created"] = pd.to_datetime(created, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
        return frame


def legacy_split(joined: str) -> tuple[str, str | None]:
    """(method, command) of a name recorded before the record kept them apart: "rlhf dpo" → ("rlhf", "dpo")."""
    method, _, command = str(joined or "").partition(" ")
    return method, command or None


def _with_command(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an older store or side file with its method and command apart; a row that has its
    `command` field is returned as it is."""
    if "command" in row or row.get("method") is None:
        return row
    method, command = legacy_split(row["method"])
    return {**row, "method": method, "command": command}


def _split_commands(conn: sqlite3.Connection) -> None:
    """Once, when the `command` column is added to an older store: split its joined names in place."""
    for rowid, joined in conn.execute("SELECT rowid, method FROM runs WHERE instr(method, ' ') > 0").fetchall():
        conn.execute("UPDATE runs SET method = ?, command = ? WHERE rowid = ?", (*legacy_split(joined), rowid))
    conn.commit()   # with the column: a failing write after this must not roll the split back


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its JSON fields read; a field that is not valid JSON becomes {} and is named in `problem`."""
    out = dict(row)
    bad = []
    for key in JSON_COLUMNS:
        try:
            value = json.loads(out[key]) if out.get(key) else {}
            if not isinstance(value, dict):
                raise ValueError
        except (TypeError, ValueError):
            value = {}
            bad.append(key)
        out[key] = value
    if bad:
        out["problem"] = f"unreadable {', '.join(bad)}"
    return out


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
