"""A SQLite store-and-forward outbox: the device writes messages, the sync agent sends and acknowledges them.

At-least-once: an item stays pending until :meth:`Outbox.mark_sent` is called with its id after the cloud
acknowledged it; the cloud deduplicates by the id (a random 128-bit hex string). Items past ``max_rows`` are
dropped oldest-first, so an offline device never grows the outbox without bound.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import StoreClosedError
from ._sqlite import Migration, connect, migrate, transaction
from ._time import now_us

_MIGRATIONS = (
    Migration(
        "0001_outbox",
        lambda c: c.execute(
            "CREATE TABLE outbox (id TEXT PRIMARY KEY, kind TEXT NOT NULL, created_us INTEGER NOT NULL,"
            " payload TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_attempt_us INTEGER)"
        ),
    ),
    # The differential-privacy budget spent per UTC day, kept beside the reports it paid for so a restart (or a
    # crash between the two writes) can never renew it.
    Migration(
        "0002_privacy_budget",
        lambda c: c.execute("CREATE TABLE privacy_budget (day TEXT PRIMARY KEY, spent REAL NOT NULL)"),
    ),
)


@dataclass(frozen=True)
class OutboxItem:
    """One pending message: its id (the deduplication key), kind, creation time and JSON payload."""

    id: str
    kind: str
    created_us: int
    payload: dict[str, Any]
    attempts: int


class Outbox:
    """The telemetry outbox in ``path`` (a SQLite file, WAL). Safe to share between threads."""

    def __init__(self, path: str | Path, *, max_rows: int = 10_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = connect(path, check_same_thread=False)
        migrate(self._conn, _MIGRATIONS)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreClosedError(f"outbox {self.path} is closed")
        return self._conn

    def put(self, kind: str, payload: dict[str, Any]) -> str:
        """Queue ``payload`` (JSON-serialisable) as a message of ``kind``; return its id."""
        item_id = uuid.uuid4().hex
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        with self._lock, transaction(self._db()) as db:
            db.execute(
                "INSERT INTO outbox (id, kind, created_us, payload) VALUES (?, ?, ?, ?)",
                (item_id, kind, now_us(), body),
            )
            db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY created_us DESC LIMIT -1 OFFSET ?)",
                (self.max_rows,),
            )
        return item_id

    def put_within_budget(
        self, kind: str, payload: dict[str, Any], *, day: str, cost: float, budget: float
    ) -> str | None:
        """Queue ``payload`` and charge ``cost`` to ``day``'s privacy budget in one transaction; None (nothing
        written, nothing charged) when the charge would take the day past ``budget``."""
        item_id = uuid.uuid4().hex
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        with self._lock, transaction(self._db()) as db:
            row = db.execute("SELECT spent FROM privacy_budget WHERE day = ?", (day,)).fetchone()
            spent = row[0] if row else 0.0
            if spent + cost > budget + 1e-9:
                return None
            db.execute(
                "INSERT INTO privacy_budget (day, spent) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET spent = ?",
                (day, spent + cost, spent + cost),
            )
            db.execute(
                "INSERT INTO outbox (id, kind, created_us, payload) VALUES (?, ?, ?, ?)",
                (item_id, kind, now_us(), body),
            )
        return item_id

    def epsilon_spent(self, day: str) -> float:
        """The privacy budget charged to ``day`` (UTC, ``YYYY-MM-DD``) so far."""
        with self._lock:
            row = self._db().execute("SELECT spent FROM privacy_budget WHERE day = ?", (day,)).fetchone()
        return float(row[0]) if row else 0.0

    def pending(self, limit: int = 100) -> list[OutboxItem]:
        """The oldest ``limit`` unsent items; each call counts as a send attempt for them."""
        with self._lock, transaction(self._db()) as db:
            rows = db.execute(
                "SELECT id, kind, created_us, payload, attempts FROM outbox ORDER BY created_us LIMIT ?",
                (limit,),
            ).fetchall()
            stamp = now_us()
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_us = ? WHERE id = ?",
                [(stamp, r[0]) for r in rows],
            )
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4] + 1) for r in rows]

    def mark_sent(self, ids: Sequence[str]) -> int:
        """Forget the items the cloud acknowledged; unknown ids (a duplicate ack) are ignored."""
        with self._lock, transaction(self._db()) as db:
            cur = db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
        return cur.rowcount

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT count(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        """Close the database; further use raises :class:`StoreClosedError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
