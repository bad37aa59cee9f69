"""FeatureStore's stream-event and upkeep operations: appending and pruning events, the TTL sweep, deleting an
entity. A mixin of :class:`~edge_runtime.features.FeatureStore`, split from ``_store.py`` by responsibility; it
uses the store's writer connection, lock and listeners under the same contract (one writer behind the lock, one
transaction per call, listeners notified after the commit).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edge_runtime._errors import UnknownNameError
from edge_runtime._sqlite import transaction

from ._maintenance import delete_entity, resolve_entity, sweep_expired
from ._registry import Registry, stream_table
from ._stream import PRUNE_EVERY_ROWS, PRUNE_EVERY_US, insert_sql, prune_sql
from ._write import encode_batch, to_columns


class StreamAndUpkeep:
    """Stream events and upkeep; the attributes below are the store's own (see ``FeatureStore.__init__``)."""

    _reg: Registry
    _lock: threading.RLock
    _writer: sqlite3.Connection
    _listeners: list[Callable[[str, list[tuple[Any, ...]]], None]]
    _prune_state: dict[str, tuple[int, int]]

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

        def _now_us(self) -> int: ...

        def _notify(self, touched: Mapping[str, list[tuple[Any, ...]]]) -> None: ...

    def push_events(self, stream: str, rows: object) -> int:
        """Append events (join keys, ``event_timestamp``, event fields) to ``stream``'s log; returns the count.

        Events older than the longest window of any view over the stream are pruned now and then.
        """
        streams = self._reg.streams()
        if stream not in streams:
            raise UnknownNameError("stream", stream, streams)
        keys, fields = streams[stream]
        target = f"stream {stream!r}"
        n, cols, row_dicts = to_columns(rows, target)
        field_list = list(fields.values())
        encoded = encode_batch(
            target=target, n=n, cols=cols, row_dicts=row_dicts, keys=keys, fields=field_list, kind="event field"
        )
        if n == 0:
            return 0
        table = stream_table(stream)
        with self._lock:
            self._check_open()
            now = self._now_us()
            last, pending = self._prune_state.get(stream, (0, 0))
            pending += n
            with transaction(self._writer):
                self._writer.executemany(insert_sql(table, keys, list(fields)), zip(*encoded, strict=False))
                if now - last >= PRUNE_EVERY_US or pending >= PRUNE_EVERY_ROWS:
                    self._writer.execute(prune_sql(table), (now - self._reg.stream_max_window_us(stream),))
                    last, pending = now, 0
            self._prune_state[stream] = (last, pending)
        if self._listeners:
            entity_keys = list(dict.fromkeys(zip(*encoded[: len(keys)], strict=False)))
            self._notify({v.name: entity_keys for v in self._reg.stream_views.values() if v.source == stream})
        return n

    def prune_events(self) -> dict[str, int]:
        """Delete, in every stream, the events older than the longest window over it; counts per stream."""
        out = {}
        with self._lock:
            self._check_open()
            now = self._now_us()
            with transaction(self._writer):
                for stream in self._reg.streams():
                    cutoff = now - self._reg.stream_max_window_us(stream)
                    out[stream] = self._writer.execute(prune_sql(stream_table(stream)), (cutoff,)).rowcount
                    self._prune_state[stream] = (now, 0)
        return out

    def sweep_expired(self) -> dict[str, int]:
        """Delete the rows older than their view's TTL (they already read as expired); counts per view."""
        with self._lock:
            self._check_open()
            with transaction(self._writer):
                return sweep_expired(self._writer, self._reg, self._now_us())

    def delete_entity(self, keys: Mapping[str, Any], *, entity: str | None = None) -> dict[str, int]:
        """Remove every trace of one entity — its rows in every view and its stream events — in one transaction.

        ``keys`` are the entity's join keys (``{"user_id": 7}``); ``entity`` names it when several entities share
        join-key names. Returns the deleted rows per view (``stream:<name>`` for event logs).
        """
        ent = resolve_entity(self._reg, keys, entity)
        want = bool(self._listeners)
        with self._lock:
            self._check_open()
            with transaction(self._writer):
                counts, touched = delete_entity(self._writer, self._reg, ent, keys, want)
        if want:
            self._notify(touched)
        return counts
