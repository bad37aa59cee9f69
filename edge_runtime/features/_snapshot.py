"""Multi-part snapshots: stage a full copy of a feature view part by part, then swap it in in one transaction.

A sync agent receives a snapshot of a view as several messages. Upserting each into the live table would show
readers a mix of old and new content, and could never remove the rows the snapshot no longer has. Instead every
part is upserted into a staging table ``_snap__<view>`` (same columns, unique on the join keys, newest event wins
within the snapshot) in one transaction with the caller's state, and the last part, in its own single
transaction, deletes the live rows absent from the staging table, upserts the staged rows and drops the staging
table. Readers see the old content until that commit and the whole new content after it.
"""

from __future__ import annotations

import sqlite3
from itertools import repeat
from typing import Any

from edge_runtime._errors import FeatureStoreError
from edge_runtime._sqlite import quote_ident

from ._definitions import FeatureView
from ._registry import view_table
from ._write import upsert_sql


def staging_table(view: str) -> str:
    """The quoted name of ``view``'s snapshot staging table."""
    return quote_ident(f"_snap__{view}")


def reset_staging(conn: sqlite3.Connection, view: FeatureView) -> None:
    """(Re)create an empty staging table for ``view`` (inside the caller's transaction)."""
    table = staging_table(view.name)
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} AS SELECT * FROM {view_table(view.name)} WHERE 0")
    keys = ", ".join(quote_ident(k) for k in view.join_keys)
    conn.execute(f"CREATE UNIQUE INDEX {quote_ident(f'_snap__{view.name}__key')} ON {table} ({keys})")


def stage_rows(conn: sqlite3.Connection, view: FeatureView, encoded: list[Any], written_us: int) -> None:
    """Upsert encoded rows (join keys, features, event time) into the staging table."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (f"_snap__{view.name}",)
    ).fetchone()
    if exists is None:
        raise FeatureStoreError(
            f"no snapshot of feature view {view.name!r} is being staged; the first part must come first (part=0)"
        )
    sql = upsert_sql(staging_table(view.name), view.join_keys, [f.name for f in view.schema])
    conn.executemany(sql, zip(*encoded, repeat(written_us)))


def swap_in(conn: sqlite3.Connection, view: FeatureView, written_us: int) -> tuple[int, int]:
    """Replace ``view``'s rows by the staged ones and drop the staging table; returns (rows kept, rows deleted).

    Rows the snapshot does not hold are deleted; staged rows replace live ones unless the live row has a newer
    event time (the same newest-event-wins rule as every write).
    """
    live, staged = view_table(view.name), staging_table(view.name)
    keys = [quote_ident(k) for k in view.join_keys]
    match = " AND ".join(f"s.{k} = {live}.{k}" for k in keys)
    before = conn.total_changes
    conn.execute(f"DELETE FROM {live} WHERE NOT EXISTS (SELECT 1 FROM {staged} AS s WHERE {match})")
    deleted = conn.total_changes - before
    cols = [*keys, *(quote_ident(f.name) for f in view.schema), "event_ts"]
    col_list = ", ".join(cols)
    sets = ", ".join(f"{c} = excluded.{c}" for c in [*cols[len(keys) :], "written_us"])
    conn.execute(
        f"INSERT INTO {live} ({col_list}, written_us) SELECT {col_list}, ? FROM {staged} WHERE true "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets} WHERE excluded.event_ts >= {live}.event_ts",
        (written_us,),
    )
    kept = conn.execute(f"SELECT count(*) FROM {staged}").fetchone()[0]
    conn.execute(f"DROP TABLE {staged}")
    return int(kept), int(deleted)
