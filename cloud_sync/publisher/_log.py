"""The delta log: per (target, stream) epochs and sequence numbers, the messages of the current epoch, and what
each target holds now, so catch-ups can be answered by a replay or a fresh snapshot.

A *target* is a device id, or ``"*"`` for a fleet-wide (broadcast) stream. Every method runs on the thread that
owns the write connection; each publish or catch-up is one transaction, committed before anything is sent (the
log, not the broker queue, is the record: a message lost after the commit is healed by the next catch-up).
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import msgpack
import numpy as np

from cloud_sync._errors import MessageTooLargeError, PublisherError
from cloud_sync.protocol import (
    Codec,
    Column,
    Envelope,
    FeatureBatch,
    MessageType,
    Topics,
    encode_feature_batches,
)
from edge_runtime._sqlite import transaction
from edge_runtime._time import now_us

from ._db import BROADCAST

#: Bytes kept free in broadcast messages: a catch-up re-addresses them to one device (ids up to 128 characters).
_READDRESS_ROOM = 160
#: A device ahead of the log (cloud database restored) gets a fresh snapshot at most this often per stream.
_RESET_INTERVAL_S = 30.0
#: A broadcast stream is re-snapshotted for a catch-up only when replaying costs this many times its state.
_BROADCAST_SNAPSHOT_FACTOR = 4


class Outgoing(NamedTuple):
    """One message to publish (``message_id``: its envelope's id, which the device's ack names)."""

    topic: str
    payload: bytes
    retain: bool = False
    message_id: bytes = b""


@dataclass(frozen=True)
class StreamInfo:
    """How the publisher knows a stream: per-device or broadcast, its join keys, column dtypes, event-time column."""

    stream: str
    scope: str
    join_keys: tuple[str, ...]
    dtypes: Mapping[str, str]
    ts_column: str | None


@dataclass(frozen=True)
class TargetResult:
    """What one publish sent to one target: kind (a first delta goes out as a snapshot), epoch, seq range."""

    target: str
    kind: str
    epoch: int
    seq_first: int
    seq_last: int
    rows: int
    tombstones: int
    messages: int


@dataclass(frozen=True)
class CatchUpPlan:
    """How a catch-up was answered: ``action`` is ``replay``, ``snapshot`` or ``none`` (already up to date)."""

    device: str
    stream: str
    action: str
    epoch: int
    seq_first: int
    seq_last: int
    rows: int
    messages: list[Outgoing]


class DeltaLog(Protocol):
    """What the worker needs from a delta log. :class:`FeatureLog` (SQLite, in the publisher database) is the
    default; another store registers a factory in :data:`LOG_STORES` and is chosen by ``CloudConfig.log_store``.
    A factory is called on the worker thread as ``factory(conn, codec, topics, clock)`` (``conn``: the
    publisher database, which holds the ledger and releases whatever stores the log)."""

    def stream(self, name: str) -> StreamInfo | None:
        """The registered stream ``name``, or None."""
        ...

    def head(self, target: str, stream: str) -> tuple[int, int] | None:
        """(epoch, last_seq) of a target's stream."""
        ...

    def streams_for_device(self, device: str) -> list[tuple[str, str]]:
        """(stream, target) of every stream ``device`` should hold."""
        ...

    def publish(
        self, info: StreamInfo, batches: Mapping[str, FeatureBatch], *, snapshot: bool
    ) -> tuple[list[TargetResult], list[Outgoing]]:
        """Log one publish durably and return the messages to send."""
        ...

    def catch_up(self, device: str, stream: str, epoch: int, applied: int) -> CatchUpPlan:
        """How to bring ``device`` from ``(epoch, applied)`` to the head of ``stream``."""
        ...


#: Delta log stores by name → ``"module:factory"`` (imported when chosen).
LOG_STORES: dict[str, str] = {"sqlite": "cloud_sync.publisher._log:FeatureLog"}


def open_log(name: str, conn: sqlite3.Connection, codec: Codec, topics: Topics, clock: Callable[[], float]) -> DeltaLog:
    """The delta log store ``name`` from :data:`LOG_STORES`."""
    try:
        target = LOG_STORES[name]
    except KeyError:
        raise PublisherError(f"no delta log store {name!r}; known: {', '.join(sorted(LOG_STORES))}") from None
    module, _, attr = target.partition(":")
    factory = getattr(importlib.import_module(module), attr)
    store: DeltaLog = factory(conn, codec, topics, clock)
    return store


class FeatureLog:
    """Delta log and per-target state over the publisher database (see module docstring)."""

    def __init__(self, conn: sqlite3.Connection, codec: Codec, topics: Topics, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.codec = codec
        self.topics = topics
        self.clock = clock
        self._broadcast_codec = codec.with_limits(max_message_bytes=codec.max_message_bytes - _READDRESS_ROOM)
        self._resets: dict[tuple[str, str], float] = {}
        # Logged messages were encoded by us; reading them back must not trip over a limit lowered since.
        self._replay_codec = codec.with_limits(max_message_bytes=2**31, max_body_bytes=2**31)

    # --- streams ----------------------------------------------------------------------------------------------

    def stream(self, name: str) -> StreamInfo | None:
        """The registered stream ``name``, or None."""
        row = self.conn.execute(
            "SELECT scope, join_keys, dtypes, ts_column FROM streams WHERE stream = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return StreamInfo(name, row[0], tuple(json.loads(row[1])), dict(json.loads(row[2])), row[3])

    def register(self, info: StreamInfo) -> StreamInfo:
        """Record ``info`` (inside the caller's transaction), or check it agrees with what is recorded.

        A stream is either per-device or broadcast for its whole life; columns may be added, never retyped.
        """
        known = self.stream(info.stream)
        if known is None:
            self.conn.execute(
                "INSERT INTO streams (stream, scope, join_keys, dtypes, ts_column, created_us) VALUES (?,?,?,?,?,?)",
                (
                    info.stream,
                    info.scope,
                    json.dumps(list(info.join_keys)),
                    json.dumps(list(info.dtypes.items())),
                    info.ts_column,
                    now_us(self.clock),
                ),
            )
            return info
        if known.scope != info.scope:
            raise PublisherError(
                f"feature view {info.stream!r} is published {'per device' if known.scope == 'device' else 'fleet-wide'}"
                f"; it cannot also be published {'per device' if info.scope == 'device' else 'fleet-wide'}"
            )
        if known.join_keys != info.join_keys:
            raise PublisherError(
                f"feature view {info.stream!r} has join keys {list(known.join_keys)}, not {list(info.join_keys)}"
            )
        merged = dict(known.dtypes)
        for name, dtype in info.dtypes.items():
            if merged.setdefault(name, dtype) != dtype:
                raise PublisherError(
                    f"feature view {info.stream!r}: column {name!r} was published as {merged[name]}, now as {dtype}"
                )
        if merged != dict(known.dtypes):
            self.conn.execute(
                "UPDATE streams SET dtypes = ? WHERE stream = ?", (json.dumps(list(merged.items())), info.stream)
            )
        return StreamInfo(info.stream, known.scope, known.join_keys, merged, known.ts_column)

    def targets(self, stream: str) -> list[str]:
        """Every target that has a head for ``stream``."""
        return [r[0] for r in self.conn.execute("SELECT target FROM heads WHERE stream = ?", (stream,))]

    def head(self, target: str, stream: str) -> tuple[int, int] | None:
        """(epoch, last_seq) of ``target``'s stream, or None before the first publish."""
        row = self.conn.execute(
            "SELECT epoch, last_seq FROM heads WHERE target = ? AND stream = ?", (target, stream)
        ).fetchone()
        return (row[0], row[1]) if row else None

    def streams_for_device(self, device: str) -> list[tuple[str, str]]:
        """(stream, target) of every stream ``device`` should hold: its own and every broadcast one."""
        return [
            (r[0], r[1])
            for r in self.conn.execute(
                "SELECT stream, target FROM heads WHERE target IN (?, ?) ORDER BY stream", (device, BROADCAST)
            )
        ]

    # --- publishing -------------------------------------------------------------------------------------------

    def publish(
        self, info: StreamInfo, batches: Mapping[str, FeatureBatch], *, snapshot: bool
    ) -> tuple[list[TargetResult], list[Outgoing]]:
        """Log and encode one publish: ``batches`` maps each target to its rows; one transaction for all of them.

        A snapshot starts a new epoch for each target (targets that hold rows of the stream but got none this
        time get an empty snapshot: their rows are gone from the source). The first publish to a target is sent
        as a snapshot whatever ``snapshot`` says, because a device can only start a stream from one.
        """
        results: list[TargetResult] = []
        out: list[Outgoing] = []
        with transaction(self.conn):
            info = self.register(info)
            work = dict(batches)
            if snapshot:
                for target in self.targets(info.stream):
                    if target not in work:
                        work[target] = _empty_batch(info)
            for target, batch in work.items():
                head = self.head(target, info.stream)
                as_snapshot = snapshot or head is None
                self._apply_state(info, target, batch, replace_all=as_snapshot)
                if as_snapshot:
                    epoch = (head[0] if head else 0) + 1
                    send = FeatureBatch(info.stream, batch.columns, kind="snapshot")
                    first_seq = 1
                else:
                    assert head is not None
                    epoch, first_seq = head[0], head[1] + 1
                    send = batch
                frames = self._log_frames(info, target, send, epoch, first_seq, new_epoch=as_snapshot)
                out.extend(frames)
                results.append(
                    TargetResult(
                        target,
                        "snapshot" if as_snapshot else "delta",
                        epoch,
                        first_seq,
                        first_seq + len(frames) - 1,
                        batch.num_rows,
                        0 if as_snapshot else batch.num_tombstones,
                        len(frames),
                    )
                )
        return results, out

    def _log_frames(
        self, info: StreamInfo, target: str, batch: FeatureBatch, epoch: int, first_seq: int, *, new_epoch: bool
    ) -> list[Outgoing]:
        codec = self._broadcast_codec if target == BROADCAST else self.codec
        frames = encode_feature_batches(batch, codec=codec, device=target, epoch=epoch, first_seq=first_seq)
        now = now_us(self.clock)
        if new_epoch:
            self.conn.execute("DELETE FROM log WHERE target = ? AND stream = ?", (target, info.stream))
        rows = []
        for frame in frames:
            piece = FeatureBatch.decode_body(frame.envelope.body) if len(frames) > 1 else batch
            rows.append(
                (
                    target,
                    info.stream,
                    epoch,
                    frame.envelope.seq_first,
                    batch.kind,
                    piece.num_rows + piece.num_tombstones,
                    frame.payload,  # the wire bytes, already compressed: a replay decodes and re-addresses them
                    now,
                )
            )
        self.conn.executemany(
            "INSERT INTO log (target, stream, epoch, seq, kind, n_rows, payload, published_us) "
            "VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        last = first_seq + len(frames) - 1
        self.conn.execute(
            "INSERT INTO heads (target, stream, epoch, last_seq, updated_us) VALUES (?,?,?,?,?) "
            "ON CONFLICT (target, stream) DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq, "
            "updated_us = excluded.updated_us",
            (target, info.stream, epoch, last, now),
        )
        topic = self._topic(target, info.stream)
        return [Outgoing(topic, f.payload, False, f.envelope.message_id) for f in frames]

    def _topic(self, target: str, stream: str) -> str:
        if target == BROADCAST:
            return self.topics.broadcast(MessageType.FEATURE_BATCH, stream)
        return self.topics.down(target, MessageType.FEATURE_BATCH, stream)

    # --- state ------------------------------------------------------------------------------------------------

    def _apply_state(self, info: StreamInfo, target: str, batch: FeatureBatch, *, replace_all: bool) -> None:
        if replace_all:
            self.conn.execute("DELETE FROM state WHERE target = ? AND stream = ?", (target, info.stream))
        rows = _row_dicts(batch.columns)
        keys = info.join_keys
        ts = info.ts_column
        upsert = (
            "INSERT INTO state (target, stream, key, event_us, row) VALUES (?,?,?,?,?) "
            "ON CONFLICT (target, stream, key) DO UPDATE SET event_us = excluded.event_us, row = excluded.row "
            "WHERE state.event_us IS NULL OR excluded.event_us IS NULL OR excluded.event_us >= state.event_us"
        )
        self.conn.executemany(
            upsert,
            (
                (
                    target,
                    info.stream,
                    msgpack.packb([row[k] for k in keys], use_bin_type=True),
                    row.get(ts) if ts else None,
                    msgpack.packb(row, use_bin_type=True),
                )
                for row in rows
            ),
        )
        if replace_all or not batch.tombstones:
            return
        delete = (
            "DELETE FROM state WHERE target = ? AND stream = ? AND key = ? "
            "AND (? IS NULL OR event_us IS NULL OR event_us <= ?)"
        )
        params = []
        for row in _row_dicts(batch.tombstones):
            when = row.get(ts) if ts else None
            params.append((target, info.stream, msgpack.packb([row[k] for k in keys], use_bin_type=True), when, when))
        self.conn.executemany(delete, params)

    def state_rows(self, target: str, stream: str) -> int:
        """Number of entities ``target`` holds in ``stream``."""
        row = self.conn.execute(
            "SELECT count(*) FROM state WHERE target = ? AND stream = ?", (target, stream)
        ).fetchone()
        return int(row[0])

    def snapshot_batch(self, info: StreamInfo, target: str) -> FeatureBatch:
        """A snapshot of everything ``target`` holds in the stream, rebuilt from the state table."""
        rows = [
            msgpack.unpackb(r[0], raw=False)
            for r in self.conn.execute(
                "SELECT row FROM state WHERE target = ? AND stream = ? ORDER BY key", (target, info.stream)
            )
        ]
        columns: dict[str, Column] = {}
        for name, dtype in info.dtypes.items():
            values = [row.get(name) for row in rows]
            if dtype == "timestamp":
                nulls = np.array([v is None for v in values], dtype=bool)
                data = np.array([0 if v is None else v for v in values], dtype=np.int64)
                columns[name] = Column(name, dtype, data, nulls if nulls.any() else None)
            else:
                columns[name] = Column.from_values(name, values, dtype)
        return FeatureBatch(info.stream, columns, kind="snapshot")

    # --- catch-up ---------------------------------------------------------------------------------------------

    def catch_up(self, device: str, stream: str, epoch: int, applied: int) -> CatchUpPlan:
        """Bring ``device`` from ``(epoch, applied)`` to the head of ``stream``: replay or fresh snapshot.

        Replays resend the logged messages with their original sequence numbers to the device's own topic (also
        for broadcast streams); when the device is on an older epoch the replay starts at seq 1, which carries
        the epoch's snapshot. Whichever sends fewer rows wins (for a broadcast stream, whose fresh snapshot goes to
        the whole fleet, the replay must cost 4x the state before a snapshot wins). A device ahead of the log (the
        cloud database was reset) gets a fresh snapshot in an epoch above its own.
        """
        info = self.stream(stream)
        target = device if info is None or info.scope == "device" else BROADCAST
        head = self.head(target, stream) if info is not None else None
        if info is None or head is None:
            return CatchUpPlan(device, stream, "none", epoch, 0, 0, 0, [])
        head_epoch, last_seq = head
        if epoch == head_epoch and applied == last_seq:
            return CatchUpPlan(device, stream, "none", epoch, 0, 0, 0, [])
        if epoch > head_epoch or (epoch == head_epoch and applied > last_seq):
            return self._reset(info, target, device, floor=epoch)
        start = applied + 1 if epoch == head_epoch else 1
        replay_rows, count = self.conn.execute(
            "SELECT coalesce(sum(n_rows), 0), count(*) FROM log WHERE target = ? AND stream = ? AND epoch = ? "
            "AND seq BETWEEN ? AND ?",
            (target, stream, head_epoch, start, last_seq),
        ).fetchone()
        complete = count == last_seq - start + 1
        snapshot_rows = self.state_rows(target, stream)
        if target == BROADCAST:
            # A fresh broadcast snapshot makes every device re-snapshot: only worth it once the log is far
            # longer than the state (then it also makes every later catch-up cheaper).
            snapshot_rows *= _BROADCAST_SNAPSHOT_FACTOR
        if complete and replay_rows <= snapshot_rows:
            return self._replay(target, device, stream, head_epoch, start, last_seq, int(replay_rows))
        return self._fresh_snapshot(info, target, device, floor=epoch)

    def _replay(
        self, target: str, device: str, stream: str, epoch: int, first: int, last: int, rows: int
    ) -> CatchUpPlan:
        out = []
        for seq, payload in self.conn.execute(
            "SELECT seq, payload FROM log WHERE target = ? AND stream = ? AND epoch = ? AND seq BETWEEN ? AND ? "
            "ORDER BY seq",
            (target, stream, epoch, first, last),
        ):
            logged = self._replay_codec.decode(payload)  # re-addressed: a fresh id, this device, the same seq
            env = Envelope(
                type=MessageType.FEATURE_BATCH,
                device=device,
                body=logged.body,
                stream=stream,
                epoch=epoch,
                seq_first=seq,
                seq_last=seq,
            )
            try:
                payload = self.codec.encode(env)
            except MessageTooLargeError as exc:
                raise PublisherError(f"cannot replay {stream} seq {seq} to {device}: {exc}") from exc
            topic = self.topics.down(device, MessageType.FEATURE_BATCH, stream)
            out.append(Outgoing(topic, payload, False, env.message_id))
        return CatchUpPlan(device, stream, "replay", epoch, first, last, rows, out)

    def _reset(self, info: StreamInfo, target: str, device: str, *, floor: int) -> CatchUpPlan:
        """A device claims to be ahead of the log: a fresh snapshot above its epoch, at most once per
        ``_RESET_INTERVAL_S`` per (target, stream) — a device must not be able to make the cloud rebuild
        snapshots (or, for a broadcast stream, re-snapshot the whole fleet) as fast as it can send requests."""
        now = time.monotonic()
        key = (target, info.stream)
        last = self._resets.get(key)
        if last is not None and now - last < _RESET_INTERVAL_S:
            return CatchUpPlan(device, info.stream, "none", floor, 0, 0, 0, [])
        self._resets[key] = now
        return self._fresh_snapshot(info, target, device, floor=floor)

    def _fresh_snapshot(self, info: StreamInfo, target: str, device: str, *, floor: int) -> CatchUpPlan:
        """A new epoch (above ``floor`` and the current one) holding ``target``'s whole state, logged and sent.

        For a broadcast stream the new epoch goes to the whole fleet: every device re-snapshots once, and later
        catch-ups replay from the compact new epoch.
        """
        with transaction(self.conn):
            head = self.head(target, info.stream)
            epoch = max(head[0] if head else 0, floor) + 1
            batch = self.snapshot_batch(info, target)
            out = self._log_frames(info, target, batch, epoch, 1, new_epoch=True)
        return CatchUpPlan(device, info.stream, "snapshot", epoch, 1, len(out), batch.num_rows, out)


def _empty_batch(info: StreamInfo) -> FeatureBatch:
    cols = {name: Column.from_values(name, [], dtype) for name, dtype in info.dtypes.items()}
    return FeatureBatch(info.stream, cols, kind="snapshot")


def _row_dicts(columns: Mapping[str, Column]) -> list[dict[str, Any]]:
    """Columns as row dicts of plain Python values (timestamps as epoch µs, vectors as lists, None = missing)."""
    names = list(columns)
    lists: list[Sequence[Any]] = []
    for col in columns.values():
        values = col.values
        if isinstance(values, np.ndarray):
            items = values.tolist()
            if col.nulls is not None:
                items = [None if missing else v for v, missing in zip(items, col.nulls.tolist(), strict=True)]
            lists.append(items)
        else:
            lists.append(values)
    return [dict(zip(names, vals, strict=True)) for vals in zip(*lists, strict=True)] if lists else []
