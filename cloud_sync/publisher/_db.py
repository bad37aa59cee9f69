"""The publisher's SQLite schema: delta log, per-device feature state, releases, fleet ledger, telemetry.

One file, WAL mode, named migrations (``edge_runtime._sqlite``). Within one process a single worker thread owns
the write connection; other processes (a one-shot ``cloud-sync publish`` beside a running ``cloud-sync cloud``)
take turns through SQLite's lock with a busy timeout. Times are integer epoch microseconds (UTC).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_runtime._sqlite import Migration, connect, migrate

#: The ``target`` of a fleet-wide stream (the protocol's broadcast device).
BROADCAST = "*"


def _v1(conn: sqlite3.Connection) -> None:
    # One execute per statement: executescript would COMMIT the migration's transaction half-way.
    for statement in _V1_SQL.split(";"):
        if statement.strip():
            conn.execute(statement)


_V1_SQL = """
        CREATE TABLE streams (
            stream TEXT PRIMARY KEY,
            scope TEXT NOT NULL CHECK (scope IN ('device', 'broadcast')),
            join_keys TEXT NOT NULL,
            dtypes TEXT NOT NULL,
            ts_column TEXT,
            created_us INTEGER NOT NULL
        );
        -- The head of each (target, stream): current epoch and the last sequence number used in it.
        CREATE TABLE heads (
            target TEXT NOT NULL,
            stream TEXT NOT NULL REFERENCES streams(stream),
            epoch INTEGER NOT NULL,
            last_seq INTEGER NOT NULL,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (target, stream)
        );
        -- Every message of the current epoch, so catch-ups can replay it (older epochs are pruned).
        CREATE TABLE log (
            target TEXT NOT NULL,
            stream TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            n_rows INTEGER NOT NULL,
            payload BLOB NOT NULL,
            published_us INTEGER NOT NULL,
            PRIMARY KEY (target, stream, epoch, seq)
        );
        -- What each target holds now (newest event wins), to build a fresh snapshot.
        CREATE TABLE state (
            target TEXT NOT NULL,
            stream TEXT NOT NULL,
            key BLOB NOT NULL,
            event_us INTEGER,
            row BLOB NOT NULL,
            PRIMARY KEY (target, stream, key)
        ) WITHOUT ROWID;
        CREATE TABLE releases (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            model TEXT NOT NULL,
            variant TEXT,
            version INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            size INTEGER NOT NULL,
            chunk_size INTEGER NOT NULL,
            bundle_dir TEXT NOT NULL,
            model_file TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('all', 'devices', 'canary')),
            percent REAL,
            threshold REAL NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'halted', 'superseded')),
            halt_reason TEXT,
            created_us INTEGER NOT NULL,
            halted_us INTEGER,
            UNIQUE (channel, version)
        );
        CREATE TABLE release_targets (
            release_id INTEGER NOT NULL REFERENCES releases(id),
            device TEXT NOT NULL,
            offered_us INTEGER,
            started_us INTEGER,
            outcome TEXT,
            reason TEXT,
            reported_us INTEGER,
            PRIMARY KEY (release_id, device)
        );
        CREATE TABLE devices (
            device TEXT PRIMARY KEY,
            state TEXT,
            agent TEXT,
            protocol INTEGER,
            models TEXT NOT NULL DEFAULT '{}',
            detail TEXT,
            last_event TEXT,
            first_seen_us INTEGER NOT NULL,
            last_seen_us INTEGER NOT NULL
        );
        CREATE TABLE device_streams (
            device TEXT NOT NULL,
            stream TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            applied INTEGER NOT NULL,
            status TEXT,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (device, stream)
        );
        CREATE TABLE telemetry (
            id BLOB PRIMARY KEY,
            device TEXT NOT NULL,
            kind TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            payload TEXT NOT NULL,
            received_us INTEGER NOT NULL
        );
        CREATE INDEX telemetry_device_at ON telemetry (device, at_us);
        """


MIGRATIONS = (Migration("publisher-v1", _v1),)


def open_db(path: str | Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """Open (creating and migrating as needed) the publisher database at ``path``."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path, check_same_thread=check_same_thread)
    migrate(conn, MIGRATIONS, table="_publisher_migrations")
    return conn
