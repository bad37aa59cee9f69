"""Streaming features: an append-only event log per stream and windowed aggregates computed in SQL.

One query per stream view and batch of entities reads the events of the longest window once (through the
``(keys, event_ts)`` index) and computes every aggregate with ``CASE WHEN event_ts > cutoff``, so ten aggregates
cost about as much as one. Windows are ``(now - window, now]`` as of the store's clock; events after ``now`` are
not counted yet.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime._sqlite import in_condition, quote_ident

from ._definitions import StreamFeatureView

#: Prune a stream's old events at most this often (by the store's clock) ...
PRUNE_EVERY_US = 60 * 1_000_000
#: ... or after this many pushed events, whichever comes first.
PRUNE_EVERY_ROWS = 10_000


@dataclass
class StreamQuery:
    """The aggregates of one stream view that a read needs, compiled to SQL."""

    view: StreamFeatureView
    cols: list[str]  # aggregation names, in the order of the values each row carries
    keys: tuple[str, ...]
    windows_us: list[int]
    head: str
    tail: str
    zero: tuple[Any, ...]  # the values for an entity without events in any window
    sql_one: str = ""
    sql_many: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, view: StreamFeatureView, table: str, names: Sequence[str]) -> StreamQuery:
        """Compile the aggregates ``names`` of ``view``, reading event log ``table``."""
        by_name = {a.name: a for a in view.aggregations}
        fields = {f.name: f for f in view.schema}
        exprs = []
        windows = []
        zero: list[Any] = []
        for name in names:
            a = by_name[name]
            col = "1" if a.column is None else quote_ident(a.column)
            inner = f"CASE WHEN event_ts > ? THEN {col} END"
            is_float = a.column is not None and fields[a.column].type.kind in ("float32", "float64")
            if a.function == "count":
                exprs.append(f"count({inner})")
                zero.append(0)
            elif a.function == "sum":
                exprs.append(f"coalesce(sum({inner}), {'0.0' if is_float else '0'})")
                zero.append(0.0 if is_float else 0)
            elif a.function == "mean":
                exprs.append(f"avg({inner})")
                zero.append(None)
            else:
                exprs.append(f"{a.function}({inner})")
                zero.append(None)
            windows.append(a.window_us)
        keys = view.join_keys
        key_sel = ", ".join(quote_ident(k) for k in keys)
        head = f"SELECT {', '.join(exprs)}, {key_sel} FROM {table} WHERE event_ts > ? AND event_ts <= ? AND "
        where_one = " AND ".join(f"{quote_ident(k)} = ?" for k in keys)
        return cls(
            view=view,
            cols=list(names),
            keys=keys,
            windows_us=windows,
            head=head,
            tail=f" GROUP BY {key_sel}",
            zero=tuple(zero),
            # one entity: an aggregate query without GROUP BY always returns one row (count 0 with no events)
            sql_one=f"SELECT {', '.join(exprs)} FROM {table} WHERE event_ts > ? AND event_ts <= ? AND {where_one}",
        )

    def _sql(self, size: int) -> str:
        sql = self.sql_many.get(size)
        if sql is None:
            sql = self.sql_many[size] = self.head + in_condition(self.keys, size) + self.tail
        return sql

    def fetch_one(self, conn: sqlite3.Connection, key: Sequence[Any], now_us: int) -> tuple[Any, ...]:
        """The aggregate values of one entity, as of ``now_us``."""
        cutoffs = [now_us - w for w in self.windows_us]
        row: tuple[Any, ...] = conn.execute(self.sql_one, [*cutoffs, min(cutoffs), now_us, *key]).fetchone()
        return row

    def fetch(self, conn: sqlite3.Connection, keycols: list[list[Any]], n: int, now_us: int) -> list[Any]:
        """One tuple of aggregate values per entity row, as of ``now_us``."""
        if n == 0:
            return []
        cutoffs = [now_us - w for w in self.windows_us]
        nk = len(keycols)
        wanted: list[Any] = list(dict.fromkeys(keycols[0] if nk == 1 else zip(*keycols, strict=False)))
        found: dict[Any, Any] = {}
        nv = len(self.cols)
        for start in range(0, len(wanted), 512):
            chunk = wanted[start : start + 512]
            size = 1 << (len(chunk) - 1).bit_length()
            chunk = chunk + [chunk[-1]] * (size - len(chunk))
            keyparams = chunk if nk == 1 else [v for t in chunk for v in t]
            params = [*cutoffs, min(cutoffs), now_us, *keyparams]
            for r in conn.execute(self._sql(size), params):
                found[r[nv] if nk == 1 else r[nv:]] = r[:nv]
        zero = self.zero
        keys = keycols[0] if nk == 1 else zip(*keycols, strict=False)
        return [found.get(k, zero) for k in keys]


def insert_sql(table: str, keys: Sequence[str], fields: Sequence[str]) -> str:
    """The prepared INSERT of one event into a stream's log."""
    cols = [*keys, *fields, "event_ts"]
    return f"INSERT INTO {table} ({', '.join(quote_ident(c) for c in cols)}) VALUES ({', '.join('?' * len(cols))})"


def prune_sql(table: str) -> str:
    """DELETE of the events older than a cutoff (the longest window of any view over the stream)."""
    return f"DELETE FROM {table} WHERE event_ts <= ?"
