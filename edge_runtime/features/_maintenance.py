"""Budget and privacy operations: eviction beyond ``max_rows``, the TTL sweep, deleting an entity, statistics."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from typing import Any

from edge_runtime._errors import FeatureStoreError, RowValidationError, UnknownNameError
from edge_runtime._sqlite import quote_ident

from ._definitions import Entity, FeatureView
from ._dtypes import check_key_value
from ._registry import STATE_TABLE, Registry, stream_table, view_table


def encode_state(state: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``state`` as (key, JSON) pairs, checked before any write starts."""
    if not state:
        return []
    out = []
    for key, value in state.items():
        if not isinstance(key, str):
            raise FeatureStoreError(f"state key {key!r} must be a string")
        try:
            out.append((key, json.dumps(value)))
        except (TypeError, ValueError) as exc:
            raise FeatureStoreError(f"state {key!r} is not JSON-serialisable: {exc}") from exc
    return out


def write_state(conn: sqlite3.Connection, rows: list[tuple[str, str]], now_us: int) -> None:
    """Upsert state pairs (inside the caller's transaction)."""
    if rows:
        conn.executemany(
            f"INSERT INTO {STATE_TABLE} (key, value, updated_us) VALUES (?, ?, {int(now_us)}) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
            rows,
        )


def read_state(conn: sqlite3.Connection, key: str, default: Any) -> Any:
    """The JSON value stored under ``key``."""
    found = conn.execute(f"SELECT value FROM {STATE_TABLE} WHERE key = ?", (key,)).fetchone()
    return default if found is None else json.loads(found[0])


def evict(conn: sqlite3.Connection, view: FeatureView, limit: int, want_keys: bool) -> list[tuple[Any, ...]]:
    """Delete the least recently written entities beyond ``limit`` rows; returns their keys if asked."""
    table = view_table(view.name)
    count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    excess = count - limit
    if excess <= 0:
        return []
    keys = ", ".join(quote_ident(k) for k in view.join_keys)
    victims = conn.execute(f"SELECT {keys} FROM {table} ORDER BY written_us, {keys} LIMIT ?", (excess,)).fetchall()
    where = " AND ".join(f"{quote_ident(k)} = ?" for k in view.join_keys)
    conn.executemany(f"DELETE FROM {table} WHERE {where}", victims)
    return [tuple(v) for v in victims] if want_keys else []


def sweep_expired(conn: sqlite3.Connection, reg: Registry, now_us: int) -> dict[str, int]:
    """Delete the rows of every view with a TTL whose event time is older than it; counts per view."""
    out = {}
    for v in reg.views.values():
        if v.ttl is None:
            continue
        ttl_us = int(v.ttl.total_seconds() * 1_000_000)  # type: ignore[union-attr]
        cur = conn.execute(f"DELETE FROM {view_table(v.name)} WHERE event_ts < ?", (now_us - ttl_us,))
        out[v.name] = cur.rowcount
    return out


def resolve_entity(reg: Registry, keys: Mapping[str, Any], entity: str | None) -> Entity:
    """The registered entity whose join keys are exactly ``keys`` (or the one named ``entity``)."""
    if entity is not None:
        ent = reg.entities.get(entity)
        if ent is None:
            raise UnknownNameError("entity", entity, reg.entities)
        matches = [ent]
    else:
        matches = [e for e in reg.entities.values() if set(e.join_keys) == set(keys)]
    if not matches:
        raise UnknownNameError(
            "entity with join keys",
            ",".join(sorted(keys)),
            [f"{e.name}({','.join(e.join_keys)})" for e in reg.entities.values()],
        )
    ent = matches[0]
    for k in ent.join_keys:
        if k not in keys:
            raise RowValidationError(
                f"join key {k!r} of entity {ent.name!r} is missing", target="delete_entity", row=None, column=k
            )
    return ent


def delete_entity(
    conn: sqlite3.Connection, reg: Registry, ent: Entity, keys: Mapping[str, Any], want_keys: bool
) -> tuple[dict[str, int], dict[str, list[tuple[Any, ...]]]]:
    """Delete every row and event of one entity; returns (deleted rows per table, deleted keys per view)."""
    values = []
    for k in ent.join_keys:
        try:
            values.append(check_key_value(keys[k]))
        except ValueError as exc:
            raise RowValidationError(str(exc), target="delete_entity", row=None, column=k) from None
    where = " AND ".join(f"{quote_ident(k)} = ?" for k in ent.join_keys)
    counts: dict[str, int] = {}
    touched: dict[str, list[tuple[Any, ...]]] = {}
    for v in reg.views.values():
        if ent not in v.entities:
            continue
        table = view_table(v.name)
        if want_keys:
            sel = ", ".join(quote_ident(k) for k in v.join_keys)
            touched[v.name] = [tuple(r) for r in conn.execute(f"SELECT {sel} FROM {table} WHERE {where}", values)]
        counts[v.name] = conn.execute(f"DELETE FROM {table} WHERE {where}", values).rowcount
    for stream, (skeys, _fields) in reg.streams().items():
        views = [sv for sv in reg.stream_views.values() if sv.source == stream]
        if not any(ent in sv.entities for sv in views):
            continue
        counts[f"stream:{stream}"] = conn.execute(f"DELETE FROM {stream_table(stream)} WHERE {where}", values).rowcount
        if want_keys and set(ent.join_keys) == set(skeys):
            for sv in views:
                touched[sv.name] = [tuple(keys[k] for k in skeys)]
    return counts, touched


def iter_entities(
    conn: sqlite3.Connection, reg: Registry, view: str, batch_size: int
) -> Iterator[list[dict[str, Any]]]:
    """Every entity of a feature or stream view as join-key dicts, in key order, ``batch_size`` at a time."""
    if view in reg.views:
        v: Any = reg.views[view]
        table = view_table(view)
        distinct = ""
    elif view in reg.stream_views:
        v = reg.stream_views[view]
        table = stream_table(v.source)
        distinct = "DISTINCT "
    else:
        raise UnknownNameError("feature view", view, [*reg.views, *reg.stream_views])
    keys = v.join_keys
    sel = ", ".join(quote_ident(k) for k in keys)
    cur = conn.execute(f"SELECT {distinct}{sel} FROM {table} ORDER BY {sel}")
    while True:
        chunk = cur.fetchmany(batch_size)
        if not chunk:
            return
        yield [dict(zip(keys, r, strict=False)) for r in chunk]


def stats(conn: sqlite3.Connection, reg: Registry, now_us: int) -> list[dict[str, Any]]:
    """Per view and stream: kind, rows, expired rows, oldest and newest event time (epoch µs)."""
    out = []
    for v in reg.views.values():
        table = view_table(v.name)
        cutoff = now_us - int(v.ttl.total_seconds() * 1_000_000) if v.ttl is not None else None  # type: ignore[union-attr]
        rows, oldest, newest, expired = conn.execute(
            f"SELECT count(*), min(event_ts), max(event_ts), sum(event_ts < ?) FROM {table}",
            (cutoff if cutoff is not None else -(2**63),),
        ).fetchone()
        out.append(
            {
                "name": v.name,
                "kind": "feature_view",
                "entities": ",".join(e.name for e in v.entities),
                "features": len(v.schema),
                "rows": rows,
                "expired": expired or 0,
                "oldest_event_us": oldest,
                "newest_event_us": newest,
                "ttl_seconds": v.ttl.total_seconds() if v.ttl is not None else None,  # type: ignore[union-attr]
                "max_rows": v.max_rows,
            }
        )
    for stream in reg.streams():
        rows, oldest, newest = conn.execute(
            f"SELECT count(*), min(event_ts), max(event_ts) FROM {stream_table(stream)}"
        ).fetchone()
        out.append(
            {
                "name": stream,
                "kind": "stream",
                "entities": "",
                "features": None,
                "rows": rows,
                "expired": None,
                "oldest_event_us": oldest,
                "newest_event_us": newest,
                "ttl_seconds": reg.stream_max_window_us(stream) / 1_000_000,
                "max_rows": None,
            }
        )
    return out
