"""The prediction cache: one table per model inside the feature store's SQLite file.

A cached prediction holds only for the model version and the feature values it was computed from:

* each row records the model version; a lookup for another version is a miss, and activating a new version
  purges the old rows;
* SQLite triggers on every feature view and event log the model reads delete the cached rows of an entity in the
  same transaction that writes, evicts or deletes that entity's features — whichever process or connection does
  the write, there is no moment at which a committed feature write and a stale prediction coexist;
* each row carries ``valid_until_us``: the moment its oldest input passes its TTL (or, for stream aggregates whose
  windows slide with time, a short bound), after which it is a miss;
* a miss that computed a prediction stores it only if no other connection committed in between (``PRAGMA
  data_version``), so a feature write racing a computation can never leave a stale row behind.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._sqlite import connect, in_condition, quote_ident, transaction
from edge_runtime._time import Clock, now_us

_MAX_IN = 256


@dataclass(frozen=True)
class OutputLayout:
    """How one row of a model's outputs is packed into a BLOB: (name, dtype, shape of one row) per output, then
    ``status_width`` bytes of input-status codes."""

    fields: tuple[tuple[str, np.dtype, tuple[int, ...]], ...]
    status_width: int = 0
    #: (name, dtype, shape of a one-row answer, byte offset, element count) per output, derived from ``fields``
    _spec: tuple[tuple[str, np.dtype, tuple[int, ...], int, int], ...] = field(init=False, repr=False, compare=False)
    #: bytes of one row's outputs (the status codes follow)
    output_bytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec: list[tuple[str, np.dtype, tuple[int, ...], int, int]] = []
        offset = 0
        for name, dt, shape in self.fields:
            count = int(np.prod(shape, dtype=np.int64))
            spec.append((name, dt, (1, *shape), offset, count))  # the shape of a one-row answer
            offset += count * dt.itemsize
        object.__setattr__(self, "_spec", tuple(spec))
        object.__setattr__(self, "output_bytes", offset)

    def pack(self, outputs: dict[str, np.ndarray], i: int, status: bytes = b"") -> bytes:
        """Row ``i`` of every output, concatenated, then the row's status codes."""
        parts = [np.ascontiguousarray(outputs[name][i], dtype=dt).tobytes() for name, dt, *_ in self._spec]
        parts.append(status)
        return b"".join(parts)

    def unpack_one(self, blob: bytes) -> tuple[dict[str, np.ndarray], bytes]:
        """One packed row as ``(outputs with a leading dimension of 1, status codes)``.

        The arrays are read-only views of the cached bytes: copying a few floats would cost more than the lookup.
        """
        spec = self._spec
        if len(spec) == 1:  # the usual single-output model
            name, dt, shape1, offset, count = spec[0]
            return {name: np.frombuffer(blob, dt, count, offset).reshape(shape1)}, blob[self.output_bytes :]
        out = {}
        for name, dt, shape1, offset, count in spec:
            out[name] = np.frombuffer(blob, dt, count, offset).reshape(shape1)
        return out, blob[self.output_bytes :]

    def unpack(self, blobs: Sequence[bytes]) -> tuple[dict[str, np.ndarray], list[bytes]]:
        """Stack packed rows back into output arrays; also return each row's status codes."""
        n = len(blobs)
        if n == 1:
            out, status = self.unpack_one(blobs[0])
            return out, [status]
        row_bytes = self.output_bytes + self.status_width
        flat = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, row_bytes)
        out = {}
        for name, dt, shape1, offset, count in self._spec:
            size = count * dt.itemsize
            out[name] = flat[:, offset : offset + size].copy().view(dt).reshape(n, *shape1[1:])
        return out, [b[self.output_bytes :] for b in blobs]


@dataclass(frozen=True)
class Dependency:
    """A table whose writes must invalidate cached predictions, and its key columns (a subset of the model's)."""

    table: str  # unquoted table name, e.g. fv__user_data
    keys: tuple[str, ...]
    ops: tuple[str, ...] = ("INSERT", "UPDATE", "DELETE")


class ModelCache:
    """The cache table of one model (see :class:`PredictionCache`)."""

    def __init__(self, owner: PredictionCache, model: str, keys: tuple[str, ...], layout: OutputLayout) -> None:
        self.owner = owner
        self.model = model
        self.keys = keys
        self.layout = layout
        self.table = quote_ident(f"_pc__{model}")
        self._many: dict[int, str] = {}
        where = " AND ".join(f"{quote_ident(k)} = ?" for k in keys)
        self.sql_get = (
            f"SELECT outputs FROM {self.table} WHERE {where} AND req = ? AND version = ? AND valid_until_us > ?"
        )
        cols = ", ".join(quote_ident(k) for k in keys)
        marks = ", ".join("?" for _ in keys)
        self.sql_put = (
            f"INSERT OR REPLACE INTO {self.table} ({cols}, req, version, valid_until_us, created_us, outputs) "
            f"VALUES ({marks}, ?, ?, ?, ?, ?)"
        )

    def get(self, key: tuple[Any, ...], req: str, version: int, now: int) -> bytes | None:
        """The packed outputs for ``key`` if cached for ``version`` and still valid, else None."""
        try:
            conn = self.owner._local.conn
        except AttributeError:
            conn = self.owner.reader()
        row = conn.execute(self.sql_get, (*key, req, version, now)).fetchone()
        return None if row is None else row[0]

    def get_many(
        self, wanted: Sequence[tuple[tuple[Any, ...], str]], version: int, now: int
    ) -> dict[tuple[tuple[Any, ...], str], bytes]:
        """The valid packed outputs of many ``(key, req)`` pairs, found with one ``IN`` query per 256 keys."""
        try:
            conn = self.owner._local.conn
        except AttributeError:
            conn = self.owner.reader()
        nk = len(self.keys)
        found: dict[tuple[tuple[Any, ...], str], bytes] = {}
        keys = list(dict.fromkeys(k for k, _ in wanted))
        for start in range(0, len(keys), _MAX_IN):
            chunk = keys[start : start + _MAX_IN]
            # Pad to a power of two so only a handful of distinct statements reach sqlite3's statement cache.
            size = 1 << (len(chunk) - 1).bit_length()
            chunk += [chunk[-1]] * (size - len(chunk))
            params = [v for k in chunk for v in k]
            for row in conn.execute(self._sql_many(size), (*params, version, now)):
                found[(tuple(row[:nk]), row[nk])] = row[nk + 1]
        return found

    def _sql_many(self, size: int) -> str:
        sql = self._many.get(size)
        if sql is None:
            cols = ", ".join(quote_ident(k) for k in self.keys)
            cond = in_condition(self.keys, size)
            sql = self._many[size] = (
                f"SELECT {cols}, req, outputs FROM {self.table} WHERE {cond} AND version = ? AND valid_until_us > ?"
            )
        return sql

    def put_many(
        self, items: Sequence[tuple[tuple[Any, ...], str, bytes, int]], version: int, *, seen_version: int
    ) -> bool:
        """Store ``(key, req, packed outputs, valid_until_us)`` rows computed from data read after
        ``seen_version`` (a :meth:`PredictionCache.data_version`); returns False, storing nothing, if another
        connection committed since then."""
        return self.owner.put_many(self, items, version, seen_version=seen_version)


class PredictionCache:
    """Cached predictions inside the feature store's file ``path`` (so triggers can reach them)."""

    def __init__(self, path: str | Path, *, clock: Clock, max_rows: int = 100_000) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._clock = clock
        self._lock = threading.Lock()
        self._writer = connect(path, check_same_thread=False)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._models: dict[str, ModelCache] = {}
        self._puts_since_trim = 0

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        try:
            conn: sqlite3.Connection = self._local.conn
            return conn
        except AttributeError:
            conn = connect(self.path, check_same_thread=False)
            with self._lock:
                self._readers.append(conn)
            self._local.conn = conn
            return conn

    def model(
        self, model: str, version: int, keys: tuple[str, ...], layout: OutputLayout, deps: Sequence[Dependency]
    ) -> ModelCache:
        """The cache of ``model`` keyed by ``keys``, with invalidation triggers on ``deps``; rows of other
        versions are purged."""
        with self._lock:
            cache = self._models.get(model)
            if cache is None or cache.keys != keys or cache.layout != layout:
                cache = ModelCache(self, model, keys, layout)
                with transaction(self._writer) as db:
                    _create_table(db, model, keys)
                    for dep in deps:
                        _create_triggers(db, model, dep)
                self._models[model] = cache
            with transaction(self._writer) as db:
                db.execute(f"DELETE FROM {cache.table} WHERE version != ?", (version,))
            return cache

    def data_version(self) -> int:
        """A number that changes whenever another connection commits to the file."""
        with self._lock:
            return int(self._writer.execute("PRAGMA data_version").fetchone()[0])

    def put_many(
        self,
        cache: ModelCache,
        items: Sequence[tuple[tuple[Any, ...], str, bytes, int]],
        version: int,
        *,
        seen_version: int,
    ) -> bool:
        """See :meth:`ModelCache.put_many`."""
        if not items:
            return True
        stamp = now_us(self._clock)
        with self._lock, transaction(self._writer) as db:
            if int(db.execute("PRAGMA data_version").fetchone()[0]) != seen_version:
                return False
            db.executemany(cache.sql_put, [(*key, req, version, until, stamp, blob) for key, req, blob, until in items])
            self._puts_since_trim += len(items)
            if self._puts_since_trim >= max(1, self.max_rows // 10):
                self._puts_since_trim = 0
                db.execute(_trim_sql(cache), (self.max_rows,))
        return True

    def count(self, model: str) -> int:
        """How many predictions of ``model`` are cached."""
        # Read the table even when this process has not served the model yet: the cache outlives processes.
        table = quote_ident(f"_pc__{model}")
        try:
            return int(self.reader().execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        except sqlite3.OperationalError:  # no such table: nothing was ever cached for it
            return 0

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()


def _trim_sql(cache: ModelCache) -> str:
    keys = ", ".join(quote_ident(k) for k in cache.keys)
    return (
        f"DELETE FROM {cache.table} WHERE ({keys}, req) IN (SELECT {keys}, req FROM {cache.table} "
        "ORDER BY created_us DESC LIMIT -1 OFFSET ?)"
    )


def _create_table(db: sqlite3.Connection, model: str, keys: tuple[str, ...]) -> None:
    table = quote_ident(f"_pc__{model}")
    wanted = [*keys, "req", "version", "valid_until_us", "created_us", "outputs"]
    existing = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    if existing and existing != wanted:  # a new version keyed differently: the old rows are worthless
        # Its triggers name the old key columns: left behind they would make every feature write fail.
        body = f"DELETE FROM {table} WHERE"
        for (trigger,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND instr(sql, ?) > 0", (body,)
        ).fetchall():
            db.execute(f"DROP TRIGGER {quote_ident(trigger)}")
        db.execute(f"DROP TABLE {table}")
        existing = []
    if not existing:
        # Key columns have no declared type (BLOB affinity), so 1 and '1' stay distinct, as in the feature views.
        key_cols = ", ".join(quote_ident(k) for k in keys)
        db.execute(
            f"CREATE TABLE {table} ({key_cols}, req TEXT NOT NULL, version INTEGER NOT NULL, "
            f"valid_until_us INTEGER NOT NULL, created_us INTEGER NOT NULL, outputs BLOB NOT NULL, "
            f"PRIMARY KEY ({key_cols}, req)) WITHOUT ROWID"
        )
        for k in keys[1:]:  # the primary key serves the first key; triggers delete by the others too
            db.execute(f"CREATE INDEX {quote_ident(f'_pc__{model}__{k}')} ON {table} ({quote_ident(k)})")


def _create_triggers(db: sqlite3.Connection, model: str, dep: Dependency) -> None:
    table = quote_ident(f"_pc__{model}")
    for op in dep.ops:
        ref = "OLD" if op == "DELETE" else "NEW"
        where = " AND ".join(f"{quote_ident(k)} = {ref}.{quote_ident(k)}" for k in dep.keys)
        name = quote_ident(f"_pc__{model}__{dep.table}__{op.lower()}")
        db.execute(
            f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {op} ON {quote_ident(dep.table)} "
            f"BEGIN DELETE FROM {table} WHERE {where}; END"
        )
