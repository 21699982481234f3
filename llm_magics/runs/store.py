"""Every run, recorded in one SQLite file that survives kernel restarts."""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = {
    "run_id": "TEXT PRIMARY KEY",
    "created": "REAL",
    "method": "TEXT",
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
}
JSON_COLUMNS = ("options", "metrics", "artifacts")


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        columns = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
        conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({columns})")
        # Older stores may miss columns added since: add them rather than fail.
        have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        for name, kind in COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind.replace(' PRIMARY KEY', '')}")
        return conn

    def record(self, row: dict[str, Any]) -> None:
        row = {k: row.get(k) for k in COLUMNS}
        row["created"] = row["created"] or time.time()
        for key in JSON_COLUMNS:
            row[key] = json.dumps(row[key] or {}, default=str)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with closing(self._connect()) as conn, conn:
            conn.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})", list(row.values()))

    def get(self, run_id: str) -> dict[str, Any] | None:
        with closing(self._connect()) as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _decode(row) if row else None

    def list(self, limit: int | None = None, method: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM runs", []
        if method:
            query += " WHERE method = ?"
            args.append(method)
        query += " ORDER BY created DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        if not self.path.exists():
            return []
        with closing(self._connect()) as conn:
            return [_decode(row) for row in conn.execute(query, args)]

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
            item.update(row["metrics"])
            flat.append(item)
        frame = pd.DataFrame(flat)
        frame["created"] = pd.to_datetime(frame["created"], unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")
        return frame


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS:
        out[key] = json.loads(out[key]) if out[key] else {}
    return out
