"""SQLite plumbing shared by the feature store, the model store, the prediction cache and the telemetry outbox.

Connections run in autocommit mode (``isolation_level=None``) and every write goes through :func:`transaction`,
so the code, not the driver, decides where a transaction starts and ends. WAL mode lets readers run while one
writer commits. No process-global adapters or converters are registered: timestamps are plain integers of
microseconds (see :mod:`edge_runtime._time`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._time import now_us

BUSY_TIMEOUT_MS = 10_000


def connect(path: str | Path, *, readonly: bool = False, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with the pragmas every edge-runtime database uses.

    ``":memory:"`` opens a private in-memory database (WAL does not apply there).
    """
    target = str(path)
    if readonly and target != ":memory:":
        conn = sqlite3.connect(
            f"file:{Path(target).resolve()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=check_same_thread,
            cached_statements=256,
        )
    else:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=check_same_thread, cached_statements=256)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not readonly and target != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL is durable across application crashes in WAL mode; only a power loss can drop the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` if the block raises: all of it or none of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True)
class Migration:
    """One named schema step. ``apply`` runs inside the transaction that records it."""

    name: str
    apply: Callable[[sqlite3.Connection], object]


MIGRATIONS_TABLE = "_migrations"


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, table: str = MIGRATIONS_TABLE) -> list[str]:
    """Apply the migrations not yet recorded in ``table``, each in its own transaction; return their names.

    A migration that raises leaves neither its schema changes nor its record behind, so the next open retries it.
    """
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (name TEXT PRIMARY KEY, applied_at_us INTEGER NOT NULL)')
    done = {row[0] for row in conn.execute(f'SELECT name FROM "{table}"')}
    applied = []
    for migration in migrations:
        if migration.name in done:
            continue
        with transaction(conn):
            migration.apply(conn)
            conn.execute(f'INSERT INTO "{table}" (name, applied_at_us) VALUES (?, ?)', (migration.name, now_us()))
        applied.append(migration.name)
    return applied


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (table or column name) safely."""
    return '"' + name.replace('"', '""') + '"'


def in_condition(keys: Sequence[str], size: int) -> str:
    """``k IN (?, ...)`` for one key column, ``(k1, k2) IN (VALUES (?, ?), ...)`` for several: ``size`` keys' worth
    of parameters, in key order. Callers pad ``size`` to a power of two so only a few statements get cached."""
    if len(keys) == 1:
        return f"{quote_ident(keys[0])} IN ({', '.join('?' * size)})"
    tup = "(" + ", ".join("?" * len(keys)) + ")"
    names = ", ".join(quote_ident(k) for k in keys)
    return f"({names}) IN (VALUES {', '.join([tup] * size)})"
