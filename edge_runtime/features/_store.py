"""``FeatureStore``: the on-device online store, one SQLite file in WAL mode.

Concurrency: one writer connection behind a lock does every write in one transaction; each reading thread gets
its own connection (``threading.local``), so readers never wait for the writer and always see whole batches (WAL
snapshots). A ``":memory:"`` store has no file to share, so it reads through the writer connection under the lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import ConfigError, FeatureStoreError, StoreClosedError, UnknownNameError
from edge_runtime._sqlite import connect, migrate, quote_ident, transaction
from edge_runtime._time import Clock

from ._definitions import Definition, FeatureService, FeatureView, View
from ._entity_rows import entity_columns
from ._maintenance import (
    encode_state,
    evict,
    iter_entities,
    read_state,
    stats,
    write_state,
)
from ._read import ReadPlan, compile_plan, execute, execute_one, read_one
from ._registry import META_TABLE, MIGRATIONS, MIGRATIONS_TABLE, Registry, apply_definitions, view_table
from ._response import EntityRead, OnlineResponse
from ._store_upkeep import StreamAndUpkeep
from ._write import encode_batch, encode_keys, to_columns, tombstone_times, upsert_sql

log = logging.getLogger(__name__)

#: ``callback(view_name, entity_keys)`` called after a commit changed the rows of those entities.
WriteListener = Callable[[str, list[tuple[Any, ...]]], None]


class FeatureStore(StreamAndUpkeep):
    """The online feature store at ``path`` (a SQLite file, created if missing; ``":memory:"`` for tests).

    ``clock`` returns the current time in epoch seconds (default ``time.time``); TTLs and stream windows are
    evaluated against it, so tests can move time.
    """

    def __init__(self, path: str | Path, *, clock: Clock | None = None, max_rows_per_view: int | None = None) -> None:
        if max_rows_per_view is not None and (isinstance(max_rows_per_view, bool) or max_rows_per_view < 1):
            raise ConfigError(
                "must be a positive number of rows",
                key="max_rows_per_view",
                expected="an int >= 1 or None",
                got=max_rows_per_view,
            )
        #: the device's row budget for every view (a view's own ``max_rows`` may be smaller); None = no budget
        self.max_rows_per_view = max_rows_per_view
        self.path = path if str(path) == ":memory:" else Path(path)
        self._clock: Clock = clock or time.time
        self._memory = str(path) == ":memory:"
        self._lock = threading.RLock()
        writer = None
        try:
            writer = connect(path, check_same_thread=False)
            migrate(writer, MIGRATIONS, table=MIGRATIONS_TABLE)
            self._reg = Registry.load(writer)
        except sqlite3.Error as exc:
            if writer is not None:
                writer.close()
            raise FeatureStoreError(f"cannot open feature store {str(path)!r}: {exc}") from exc
        self._writer = writer
        self._plans: dict[tuple[Any, bool], ReadPlan] = {}
        self._local = threading.local()
        self._readers: list[Any] = []
        self._listeners: list[WriteListener] = []
        self._prune_state: dict[str, tuple[int, int]] = {}
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; later calls raise :class:`StoreClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r})"

    def _now_us(self) -> int:
        return round(self._clock() * 1_000_000)

    def _row_limit(self, view: FeatureView) -> int | None:
        """The row budget of ``view``: the smaller of its own ``max_rows`` and the device's budget."""
        limits = [n for n in (view.max_rows, self.max_rows_per_view) if n is not None]
        return min(limits) if limits else None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"feature store {str(self.path)!r} is closed")

    def _reader(self) -> Any:
        try:
            return self._local.conn
        except AttributeError:
            pass
        self._check_open()
        with self._lock:
            conn = connect(self.path, check_same_thread=False)
            self._readers.append(conn)
        self._local.conn = conn
        return conn

    # --- definitions -----------------------------------------------------------------------------------------

    def apply(self, definitions: Iterable[object] | object) -> list[str]:
        """Register definitions (and what they reference), migrating tables; returns what changed.

        One transaction: a refused change (:class:`SchemaConflictError`) leaves the store as it was.
        """
        defs = list(definitions) if isinstance(definitions, (list, tuple)) else [definitions]
        with self._lock:
            self._check_open()
            reg = replace(
                self._reg,
                **{
                    k: dict(getattr(self._reg, k))
                    for k in ("entities", "request_sources", "views", "stream_views", "odfvs", "services")
                },
            )
            with transaction(self._writer):
                changes = apply_definitions(self._writer, reg, defs, self._now_us())
            self._reg = reg
            self._plans = {}
        return changes

    def refresh(self) -> None:
        """Reload the registry from the file (to see definitions another process applied)."""
        with self._lock:
            self._check_open()
            self._reg = Registry.load(self._writer)
            self._plans = {}

    def definitions(self) -> list[Definition]:
        """Every applied definition: entities, request sources, views of all kinds, services."""
        r = self._reg
        return [
            *r.entities.values(),
            *r.request_sources.values(),
            *r.views.values(),
            *r.stream_views.values(),
            *r.odfvs.values(),
            *r.services.values(),
        ]

    def get_view(self, name: str) -> View:
        """The feature, stream or on-demand view ``name``."""
        return self._reg.any_view(name)

    def get_feature_service(self, name: str) -> FeatureService:
        """The registered feature service ``name``."""
        svc = self._reg.services.get(name)
        if svc is None:
            raise UnknownNameError("feature service", name, self._reg.services)
        return svc

    def join_keys(self, view: str) -> tuple[str, ...]:
        """The join keys of a feature or stream view (the columns an entity row must carry)."""
        v = self._reg.any_view(view)
        if not isinstance(v, FeatureView) and not hasattr(v, "join_keys"):
            raise FeatureStoreError(f"{view!r} is an on-demand view; it has no join keys of its own")
        return v.join_keys

    # --- writes ----------------------------------------------------------------------------------------------

    def add_write_listener(self, callback: WriteListener) -> None:
        """Call ``callback(view_name, entity_keys)`` after every commit that changed those entities' features
        (writes, evictions, deletions, pushed events); ``entity_keys`` are tuples in join-key order."""
        self._listeners.append(callback)

    def remove_write_listener(self, callback: WriteListener) -> None:
        """Stop calling ``callback``."""
        self._listeners.remove(callback)

    def _notify(self, touched: Mapping[str, list[tuple[Any, ...]]]) -> None:
        for view, keys in touched.items():
            if not keys:
                continue
            for cb in list(self._listeners):
                try:
                    cb(view, keys)
                except Exception:  # a listener's bug must not undo or fail a committed write
                    log.exception("write listener %r failed for view %s", cb, view)

    def write_to_online_store(
        self, view: str | FeatureView, rows: object, *, state: Mapping[str, Any] | None = None
    ) -> int:
        """Upsert ``rows`` into feature view ``view``; returns the number of rows given.

        ``rows``: a list of dicts, a dict of columns (lists or numpy arrays) or a pandas DataFrame, each row with
        its join keys, features and ``event_timestamp`` (aware datetime or epoch seconds). A feature absent from a
        row is stored as missing. The whole batch is validated first (:class:`RowValidationError` names the row and
        column) and written in one transaction; a row older than the stored one for its entity is ignored.
        ``state`` (JSON values by key, read back with :meth:`get_state`) is recorded in the same transaction — a
        sync agent's applied sequence number commits with the rows it covers, or not at all.
        """
        name = view.name if isinstance(view, FeatureView) else view
        v = self._reg.views.get(name)
        if v is None:
            raise UnknownNameError("feature view", str(name), self._reg.views)
        target = f"feature view {name!r}"
        n, cols, row_dicts = to_columns(rows, target)
        encoded = encode_batch(
            target=target, n=n, cols=cols, row_dicts=row_dicts, keys=v.join_keys, fields=v.schema, kind="feature"
        )
        state_rows = encode_state(state)
        if n == 0 and not state_rows:
            return 0
        sql = upsert_sql(view_table(name), v.join_keys, [f.name for f in v.schema])
        want = bool(self._listeners)
        touched: dict[str, list[tuple[Any, ...]]] = {}
        with self._lock:
            self._check_open()
            w = self._writer
            with transaction(w):
                written = self._next_written_us(w)
                w.executemany(sql, zip(*encoded, repeat(written)))
                limit = self._row_limit(v)
                evicted = evict(w, v, limit, want) if limit is not None else []
                write_state(w, state_rows, written)
        if want:
            keys = list(dict.fromkeys(zip(*encoded[: len(v.join_keys)], strict=False)))
            written_keys = set(keys)
            touched[name] = keys + [k for k in evicted if k not in written_keys]
            self._notify(touched)
        return n

    def delete_from_online_store(
        self, view: str, entity_rows: object, *, state: Mapping[str, Any] | None = None
    ) -> int:
        """Delete the rows of the given entities (join-key dicts or columns) from one feature view, in one
        transaction with ``state`` (see :meth:`write_to_online_store`); returns the number of rows deleted.

        A deletion that carries an ``event_timestamp`` is a tombstone of that moment: it removes the stored row only
        if the row is not newer, just as an older upsert never overwrites a newer one.
        """
        v = self._reg.views.get(view)
        if v is None:
            raise UnknownNameError("feature view", view, self._reg.views)
        keys, params = self._tombstones(v, entity_rows)
        state_rows = encode_state(state)
        with self._lock:
            self._check_open()
            with transaction(self._writer):
                deleted = _delete_rows(self._writer, v, params)
                write_state(self._writer, state_rows, self._now_us())
        if self._listeners and keys:
            self._notify({view: list(dict.fromkeys(keys))})
        return deleted

    def _tombstones(self, v: FeatureView, entity_rows: object) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        # Event times are read before entity_columns turns a datetime64 array into naive datetimes.
        raw_times = entity_rows.get("event_timestamp") if isinstance(entity_rows, Mapping) else None
        n, cols = entity_columns(entity_rows)
        target = f"feature view {v.name!r}"
        keys = list(zip(*(encode_keys(cols.get(k), n, target, k) for k in v.join_keys), strict=True))
        times = raw_times if isinstance(raw_times, np.ndarray) else cols.get("event_timestamp")
        when = tombstone_times(times, n, target)
        return keys, [(*k, t, t) for k, t in zip(keys, when, strict=True)]

    def apply_changes(
        self, view: str, rows: object, deletions: object, *, state: Mapping[str, Any] | None = None
    ) -> tuple[int, int]:
        """Upsert ``rows`` and delete ``deletions`` (tombstones, as for :meth:`delete_from_online_store`) in one
        feature view, with ``state``, in ONE transaction: all of it commits or none of it. Upserts run first.
        Returns ``(rows given, rows deleted)``; listeners hear once, after the commit, with every changed key.
        """
        v = self._reg.views.get(view)
        if v is None:
            raise UnknownNameError("feature view", view, self._reg.views)
        target = f"feature view {view!r}"
        n, cols, row_dicts = to_columns(rows, target)
        encoded = encode_batch(
            target=target, n=n, cols=cols, row_dicts=row_dicts, keys=v.join_keys, fields=v.schema, kind="feature"
        )
        del_keys, params = self._tombstones(v, deletions)
        state_rows = encode_state(state)
        sql = upsert_sql(view_table(view), v.join_keys, [f.name for f in v.schema])
        want = bool(self._listeners)
        with self._lock:
            self._check_open()
            w = self._writer
            with transaction(w):
                written = self._next_written_us(w)
                w.executemany(sql, zip(*encoded, repeat(written)))
                deleted = _delete_rows(w, v, params)
                limit = self._row_limit(v)
                evicted = evict(w, v, limit, want) if limit is not None else []
                write_state(w, state_rows, written)
        if want:
            keys = list(zip(*encoded[: len(v.join_keys)], strict=False)) + del_keys + evicted
            self._notify({view: list(dict.fromkeys(keys))})
        return n, deleted

    def write_snapshot_part(
        self, view: str, rows: object, *, part: int, parts: int, state: Mapping[str, Any] | None = None
    ) -> int:
        """Stage part ``part`` (0-based) of ``parts`` of a full copy of feature view ``view``; returns the rows given.

        Each part commits in one transaction with ``state`` (like :meth:`write_to_online_store`); part 0 starts a
        new staging area (dropping any unfinished one). When the last part commits, the view's content is replaced
        by the snapshot in that same transaction: rows the snapshot does not hold disappear, and a stored row with
        a newer event time than the snapshot's is kept. Readers see the old content until then. Parts must come in
        order (a part > 0 without a staging area raises :class:`FeatureStoreError`).
        """
        from ._snapshot import reset_staging, stage_rows, staging_table, swap_in

        v = self._reg.views.get(view)
        if v is None:
            raise UnknownNameError("feature view", view, self._reg.views)
        if not (isinstance(parts, int) and isinstance(part, int) and 0 <= part < parts):
            raise FeatureStoreError(f"snapshot part {part!r} of {parts!r}: need 0 <= part < parts")
        target = f"feature view {view!r}"
        n, cols, row_dicts = to_columns(rows, target)
        encoded = encode_batch(
            target=target, n=n, cols=cols, row_dicts=row_dicts, keys=v.join_keys, fields=v.schema, kind="feature"
        )
        state_rows = encode_state(state)
        keys: list[tuple[Any, ...]] = []
        with self._lock:
            self._check_open()
            w = self._writer
            with transaction(w):
                written = self._next_written_us(w)
                if part == 0:
                    reset_staging(w, v)
                stage_rows(w, v, encoded, written)
                if part == parts - 1:
                    if self._listeners:
                        cols_sql = ", ".join(quote_ident(k) for k in v.join_keys)
                        keys = [tuple(r) for r in w.execute(f"SELECT {cols_sql} FROM {staging_table(view)}")]
                    swap_in(w, v, written)
                    limit = self._row_limit(v)
                    if limit is not None:
                        evict(w, v, limit, False)
                write_state(w, state_rows, written)
        if keys:
            self._notify({view: keys})
        return n

    def get_state(self, key: str, default: Any = None) -> Any:
        """A value recorded with ``state=`` by a write or delete (``default`` when never recorded)."""
        self._check_open()
        with self._lock:
            return read_state(self._writer, key, default)

    def _next_written_us(self, w: Any) -> int:
        # Strictly increasing across batches even when the clock stands still or steps back, so eviction order
        # is write order.
        last = w.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'last_written_us'").fetchone()[0]
        written = max(self._now_us(), last + 1)
        w.execute(f"UPDATE {META_TABLE} SET value = ? WHERE key = 'last_written_us'", (written,))
        return int(written)

    # --- reads -----------------------------------------------------------------------------------------------

    def _read_plan(
        self, features: Sequence[str] | FeatureService | str, full_feature_names: bool
    ) -> tuple[ReadPlan, int]:
        """The compiled plan for a read and the clock's now (µs); refuses a closed store."""
        plan = self._plan(features, full_feature_names)
        if self._closed:
            raise StoreClosedError(f"feature store {str(self.path)!r} is closed")
        return plan, round(self._clock() * 1_000_000)

    def _plan(self, features: Sequence[str] | FeatureService | str, full_feature_names: bool) -> ReadPlan:
        if type(features) is list:
            key: Any = (tuple(features), full_feature_names)
        elif isinstance(features, FeatureService):
            key = (features.features, full_feature_names)
        elif isinstance(features, str):
            key = (self.get_feature_service(features).features, full_feature_names)
        else:
            key = (tuple(features), full_feature_names)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = compile_plan(self._reg, key[0], full_feature_names)
        return plan

    def get_online_features(
        self,
        features: Sequence[str] | FeatureService | str,
        entity_rows: object,
        full_feature_names: bool = False,
    ) -> OnlineResponse:
        """Features for ``entity_rows`` as of now.

        ``features``: ``"view:feature"`` strings, a :class:`FeatureService` or a registered service's name.
        ``entity_rows``: a list of dicts or a dict of columns; keys that are not join keys are request data for
        on-demand views. Missing entities and values come back as None with ``NOT_FOUND``; values older than the
        view's TTL as None with ``OUTSIDE_MAX_AGE``.
        """
        plan, now = self._read_plan(features, full_feature_names)
        if self._memory:
            with self._lock:
                return execute(plan, self._writer, entity_rows, now, snapshot=True)
        if plan.single is not None and type(entity_rows) is list and len(entity_rows) == 1:
            row = entity_rows[0]
            if type(row) is dict:
                return execute_one(plan, self._reader(), row, now)
        return execute(plan, self._reader(), entity_rows, now, snapshot=True)

    def read_entity(
        self,
        features: Sequence[str] | FeatureService | str,
        entity_row: Mapping[str, Any],
        full_feature_names: bool = False,
    ) -> EntityRead:
        """One entity's features as flat lists (names, values, statuses, TTL expiry) in the requested order.

        The same answer as :meth:`get_online_features` for one entity row, without building a response; the
        serving runtime's single-entity path uses it.
        """
        plan, now = self._read_plan(features, full_feature_names)
        if self._memory:
            with self._lock:
                return read_one(plan, self._writer, entity_row, now)
        return read_one(plan, self._reader(), entity_row, now)

    def list_entities(self, view: str) -> list[dict[str, Any]]:
        """Every entity stored in a feature view (or seen in a stream view's log), as join-key dicts."""
        return [e for batch in self.iter_entities(view) for e in batch]

    def iter_entities(self, view: str, batch_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Like :meth:`list_entities`, ``batch_size`` entities at a time (ready to pass as ``entity_rows``)."""
        self._check_open()
        if self._memory:
            with self._lock:
                batches = list(iter_entities(self._writer, self._reg, view, batch_size))
            yield from batches
            return
        # A private connection: the generator may be consumed slowly while this thread reads features.
        conn = connect(self.path, readonly=True)
        try:
            yield from iter_entities(conn, self._reg, view, batch_size)
        finally:
            conn.close()

    def stats(self) -> list[dict[str, Any]]:
        """Per view and stream: rows, expired rows, oldest and newest event time, TTL and budget."""
        self._check_open()
        with self._lock:
            return stats(self._writer, self._reg, self._now_us())


def _delete_rows(w: Any, v: FeatureView, params: list[tuple[Any, ...]]) -> int:
    """Delete tombstoned rows (``(*keys, ts, ts)``; a row newer than its tombstone stays); returns the count."""
    where = " AND ".join(f"{quote_ident(k)} = ?" for k in v.join_keys)
    before = w.total_changes
    w.executemany(f"DELETE FROM {view_table(v.name)} WHERE {where} AND (? IS NULL OR event_ts <= ?)", params)
    return int(w.total_changes - before)
