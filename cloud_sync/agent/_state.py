"""The agent's own SQLite file (``<data_dir>/sync/agent.db``): model transfers in progress, the chunks received,
and the bytes downloaded per day (for the download policy). Only the agent's worker thread writes to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_runtime._sqlite import Migration, connect, migrate, transaction
from edge_runtime._time import now_us


def _create(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE transfers (key TEXT PRIMARY KEY, model TEXT NOT NULL, transfer TEXT NOT NULL,"
        " version INTEGER NOT NULL, manifest BLOB NOT NULL, started_us INTEGER NOT NULL)"
    )
    conn.execute("CREATE TABLE chunks (key TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (key, idx)) WITHOUT ROWID")
    conn.execute("CREATE TABLE bytes_per_day (day TEXT PRIMARY KEY, bytes INTEGER NOT NULL) WITHOUT ROWID")


MIGRATIONS = (Migration("agent-0001", _create),)


class AgentState:
    """Durable transfer bookkeeping. Chunks are recorded after they were written to the ``.part`` file; on resume
    each recorded chunk is re-checked against its hash, so a record never vouches for bytes that did not land."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = connect(path, check_same_thread=False)
        migrate(self._db, MIGRATIONS)

    def begin_transfer(self, key: str, model: str, transfer: str, version: int, manifest: bytes) -> None:
        """Record a transfer (kept if it already exists: a resume)."""
        with transaction(self._db) as db:
            db.execute(
                "INSERT INTO transfers (key, model, transfer, version, manifest, started_us) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO NOTHING",
                (key, model, transfer, version, manifest, now_us()),
            )

    def received(self, key: str) -> set[int]:
        """Indices recorded for transfer ``key``."""
        return {r[0] for r in self._db.execute("SELECT idx FROM chunks WHERE key = ?", (key,))}

    def record_chunk(self, key: str, idx: int, day: str, nbytes: int) -> None:
        """Chunk ``idx`` of ``key`` is written; ``nbytes`` count against ``day``'s budget."""
        with transaction(self._db) as db:
            db.execute("INSERT OR IGNORE INTO chunks (key, idx) VALUES (?, ?)", (key, idx))
            self._add_bytes(db, day, nbytes)

    def add_bytes(self, day: str, nbytes: int) -> None:
        """Count ``nbytes`` downloaded (e.g. a corrupted chunk) against ``day``'s budget."""
        with transaction(self._db) as db:
            self._add_bytes(db, day, nbytes)

    @staticmethod
    def _add_bytes(db: sqlite3.Connection, day: str, nbytes: int) -> None:
        db.execute(
            "INSERT INTO bytes_per_day (day, bytes) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET bytes = bytes + ?",
            (day, nbytes, nbytes),
        )

    def forget_chunks(self, key: str, indices: set[int]) -> None:
        """Drop records whose bytes did not verify."""
        with transaction(self._db) as db:
            db.executemany("DELETE FROM chunks WHERE key = ? AND idx = ?", [(key, i) for i in indices])

    def bytes_on(self, day: str) -> int:
        """Bytes downloaded on ``day`` (YYYY-MM-DD in the policy's timezone)."""
        row = self._db.execute("SELECT bytes FROM bytes_per_day WHERE day = ?", (day,)).fetchone()
        return int(row[0]) if row else 0

    def end_transfer(self, key: str) -> None:
        """Forget a finished or abandoned transfer."""
        with transaction(self._db) as db:
            db.execute("DELETE FROM chunks WHERE key = ?", (key,))
            db.execute("DELETE FROM transfers WHERE key = ?", (key,))

    def transfers(self) -> list[tuple[str, str, int]]:
        """(key, model, version) of every transfer in progress."""
        return [(r[0], r[1], r[2]) for r in self._db.execute("SELECT key, model, version FROM transfers")]

    def close(self) -> None:
        """Close the database."""
        self._db.close()
