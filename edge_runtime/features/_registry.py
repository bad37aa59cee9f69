"""The registry of applied definitions and the schema migrations ``apply`` performs.

Definitions are stored as JSON in ``_fs_registry``. Each feature view owns a table ``fv__<view>`` keyed by its join
keys (``WITHOUT ROWID``: a point lookup is one b-tree descent) with one native column per feature plus ``event_ts``
and ``written_us``; each stream owns an append-only event log ``ev__<stream>``. Adding a feature adds a column,
adding a view adds a table; a change the stored data cannot follow raises :class:`SchemaConflictError` and, since
``apply`` is one transaction, changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from edge_runtime._errors import DefinitionError, FeatureStoreError, SchemaConflictError, UnknownNameError
from edge_runtime._sqlite import Migration, quote_ident

from ._definitions import (
    Aggregation,
    Definition,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    RequestSource,
    StreamFeatureView,
    View,
    import_udf,
)

REGISTRY_TABLE = "_fs_registry"
META_TABLE = "_fs_meta"
STATE_TABLE = "_fs_state"
KINDS = ("entity", "request_source", "feature_view", "stream_feature_view", "on_demand_feature_view", "service")


def _create_base(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE {REGISTRY_TABLE} (kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, "
        "updated_us INTEGER NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID"
    )
    conn.execute(f"CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")
    conn.execute(f"INSERT INTO {META_TABLE} (key, value) VALUES ('last_written_us', 0)")


def _create_state(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE {STATE_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_us INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )


MIGRATIONS = (
    Migration("features-0001-registry", _create_base),
    Migration("features-0002-state", _create_state),
)
MIGRATIONS_TABLE = "_fs_migrations"


def view_table(name: str) -> str:
    """The quoted table name of feature view ``name``."""
    return quote_ident(f"fv__{name}")


def stream_table(name: str) -> str:
    """The quoted table name of stream ``name``'s event log."""
    return quote_ident(f"ev__{name}")


# --- JSON specs ------------------------------------------------------------------------------------------------


def _fields(fields: Iterable[Field]) -> list[dict[str, Any]]:
    return [{"name": f.name, "dtype": f.dtype, "allow_nan": f.allow_nan} for f in fields]


def _unfields(specs: list[dict[str, Any]]) -> list[Field]:
    return [Field(name=s["name"], dtype=s["dtype"], allow_nan=s.get("allow_nan", False)) for s in specs]


def _secs(value: object) -> float | None:
    return value.total_seconds() if isinstance(value, dt.timedelta) else None


def to_spec(d: Definition) -> dict[str, Any]:
    """The JSON-able spec stored in the registry for one definition."""
    if isinstance(d, Entity):
        return {"name": d.name, "join_keys": list(d.join_keys), "description": d.description}
    if isinstance(d, FeatureView):
        return {
            "name": d.name,
            "entities": [e.name for e in d.entities],
            "schema": _fields(d.schema),
            "ttl_seconds": _secs(d.ttl),
            "max_rows": d.max_rows,
            "description": d.description,
        }
    if isinstance(d, StreamFeatureView):
        return {
            "name": d.name,
            "entities": [e.name for e in d.entities],
            "source": d.source,
            "schema": _fields(d.schema),
            "aggregations": [
                {"column": a.column, "function": a.function, "window_seconds": _secs(a.window), "name": a.name}
                for a in d.aggregations
            ],
            "description": d.description,
        }
    if isinstance(d, OnDemandFeatureView):
        return {
            "name": d.name,
            "sources": [{"kind": kind_of(s), "name": s.name} for s in d.sources],
            "schema": _fields(d.schema),
            "udf": d.udf_ref,
            "description": d.description,
        }
    if isinstance(d, RequestSource):
        return {"name": d.name, "schema": _fields(d.schema)}
    return {"name": d.name, "features": list(d.features), "description": d.description}


def kind_of(d: object) -> str:
    """The registry kind of a definition object."""
    for cls, kind in (
        (Entity, "entity"),
        (RequestSource, "request_source"),
        (FeatureView, "feature_view"),
        (StreamFeatureView, "stream_feature_view"),
        (OnDemandFeatureView, "on_demand_feature_view"),
        (FeatureService, "service"),
    ):
        if isinstance(d, cls):
            return kind
    raise DefinitionError(
        f"cannot apply {type(d).__name__} {d!r}",
        expected="Entity, FeatureView, StreamFeatureView, OnDemandFeatureView, FeatureService or RequestSource",
    )


def _missing_udf(ref: str | None, name: str, reason: str) -> Any:
    def udf(_inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        raise FeatureStoreError(
            f"on-demand feature view {name!r}: its function {ref or '(a lambda or local function)'} is not "
            f"available in this process ({reason}); apply the view again from Python"
        )

    return udf


# --- the in-memory registry -----------------------------------------------------------------------------------


@dataclass
class Registry:
    """Applied definitions by kind and name, plus the event-log shape of every stream."""

    entities: dict[str, Entity] = field(default_factory=dict)
    request_sources: dict[str, RequestSource] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)
    stream_views: dict[str, StreamFeatureView] = field(default_factory=dict)
    odfvs: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    services: dict[str, FeatureService] = field(default_factory=dict)

    def any_view(self, name: str) -> View:
        """The feature, stream or on-demand view called ``name``; :class:`UnknownNameError` lists them."""
        v: View | None = self.views.get(name) or self.stream_views.get(name) or self.odfvs.get(name)
        if v is None:
            raise UnknownNameError("feature view", name, self.view_names())
        return v

    def view_names(self) -> list[str]:
        """Every view name of every kind."""
        return [*self.views, *self.stream_views, *self.odfvs]

    def streams(self) -> dict[str, tuple[tuple[str, ...], dict[str, Field]]]:
        """Per stream: its join keys and its event fields (the union over the views that read it)."""
        out: dict[str, tuple[tuple[str, ...], dict[str, Field]]] = {}
        for v in self.stream_views.values():
            _keys, fields = out.setdefault(v.source, (v.join_keys, {}))
            for f in v.schema:
                fields.setdefault(f.name, f)
        return out

    def stream_max_window_us(self, stream: str) -> int:
        """The longest window of any view over ``stream`` (events older than it are never read)."""
        return max((v.max_window_us for v in self.stream_views.values() if v.source == stream), default=0)

    def add(self, d: Definition) -> None:
        """Record ``d`` in memory (no checks)."""
        getattr(self, _ATTR[kind_of(d)])[d.name] = d

    # --- loading ------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> Registry:
        """Read every stored spec back into definition objects."""
        rows = conn.execute(f"SELECT kind, name, spec FROM {REGISTRY_TABLE}").fetchall()
        specs: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in KINDS}
        for kind, name, spec in rows:
            specs.setdefault(kind, {})[name] = json.loads(spec)
        reg = cls()
        for name, s in specs["entity"].items():
            reg.entities[name] = Entity(name=name, join_keys=s["join_keys"], description=s.get("description", ""))
        for name, s in specs["request_source"].items():
            reg.request_sources[name] = RequestSource(name=name, schema=_unfields(s["schema"]))
        for name, s in specs["feature_view"].items():
            reg.views[name] = FeatureView(
                name=name,
                entities=[reg.entities[e] for e in s["entities"]],
                schema=_unfields(s["schema"]),
                ttl=s.get("ttl_seconds"),
                max_rows=s.get("max_rows"),
                description=s.get("description", ""),
            )
        for name, s in specs["stream_feature_view"].items():
            reg.stream_views[name] = StreamFeatureView(
                name=name,
                entities=[reg.entities[e] for e in s["entities"]],
                source=s["source"],
                schema=_unfields(s["schema"]),
                aggregations=[
                    Aggregation(column=a["column"], function=a["function"], window=a["window_seconds"], name=a["name"])
                    for a in s["aggregations"]
                ],
                description=s.get("description", ""),
            )
        for name, s in specs["on_demand_feature_view"].items():
            sources: list[Any] = []
            for src in s["sources"]:
                table = getattr(reg, _ATTR[src["kind"]])
                sources.append(table[src["name"]])
            ref = s.get("udf")
            try:
                udf = import_udf(ref) if ref else _missing_udf(ref, name, "it was not importable")
            except ValueError as exc:
                udf = _missing_udf(ref, name, str(exc))
            reg.odfvs[name] = OnDemandFeatureView(
                name=name,
                sources=sources,
                schema=_unfields(s["schema"]),
                udf=udf,
                description=s.get("description", ""),
            )
        for name, s in specs["service"].items():
            reg.services[name] = FeatureService(name=name, features=s["features"], description=s.get("description", ""))
        return reg


_ATTR = {
    "entity": "entities",
    "request_source": "request_sources",
    "feature_view": "views",
    "stream_feature_view": "stream_views",
    "on_demand_feature_view": "odfvs",
    "service": "services",
}


def expand(defs: Iterable[object]) -> list[Definition]:
    """``defs`` plus what they reference (entities of views, sources of on-demand views), dependencies first."""
    out: dict[tuple[str, str], Definition] = {}

    def visit(d: Any) -> None:
        kind = kind_of(d)
        if isinstance(d, (FeatureView, StreamFeatureView)):
            for e in d.entities:
                visit(e)
        if isinstance(d, OnDemandFeatureView):
            for s in d.sources:
                visit(s)
        key = (kind, d.name)
        prev = out.get(key)
        if prev is not None and prev != d:
            raise DefinitionError(
                f"two different definitions of {kind.replace('_', ' ')} {d.name!r} in one apply",
                key=d.name,
                expected="one definition per name",
            )
        out[key] = d

    for d in defs:
        visit(d)
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(out.values(), key=lambda d: order[kind_of(d)])


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, str]:
    return {r[1]: r[2].upper() for r in conn.execute(f"PRAGMA table_info({table})")}


def _case_clash(kind: str, name: str, taken: Iterable[str], what: str) -> None:
    """Refuse ``name`` when a different name in ``taken`` differs from it only in letter case."""
    for other in taken:
        if other != name and other.lower() == name.lower():
            raise DefinitionError(
                f"{kind} {name!r} and the registered {what} {other!r} differ only in letter case; SQLite table "
                "names ignore case, so they would share one table",
                key=name,
                expected=f"a name that differs from {other!r} in more than letter case (or reuse {other!r})",
                got=name,
            )


def _check_names_free(reg: Registry, d: Definition) -> None:
    if isinstance(d, (FeatureView, StreamFeatureView, OnDemandFeatureView)):
        _case_clash(kind_of(d).replace("_", " "), d.name, reg.view_names(), "view")
    if isinstance(d, StreamFeatureView):
        _case_clash("stream", d.source, {v.source for v in reg.stream_views.values()}, "stream")
        for other in reg.stream_views.values():
            if other.source == d.source and other.name != d.name:
                theirs = {f.name.lower(): f.name for f in other.schema}
                for f in d.schema:
                    if theirs.get(f.name.lower(), f.name) != f.name:
                        raise DefinitionError(
                            f"stream feature view {d.name!r}: event field {f.name!r} and field "
                            f"{theirs[f.name.lower()]!r} of view {other.name!r} (same stream {d.source!r}) differ "
                            "only in letter case; SQLite column names ignore case",
                            key=d.name,
                            expected=f"the same spelling {theirs[f.name.lower()]!r} or another name",
                            got=f.name,
                        )
    if isinstance(d, (FeatureView, StreamFeatureView, OnDemandFeatureView)):
        for group in (reg.views, reg.stream_views, reg.odfvs):
            existing = group.get(d.name)
            if existing is not None and type(existing) is not type(d):
                raise SchemaConflictError(
                    f"{d.name!r} is already a {kind_of(existing).replace('_', ' ')}; it cannot become a "
                    f"{kind_of(d).replace('_', ' ')}",
                    view=d.name,
                )


def apply_definitions(conn: sqlite3.Connection, reg: Registry, defs: Iterable[object], now_us: int) -> list[str]:
    """Migrate the schema and record ``defs``; runs inside the caller's transaction. Returns what changed."""
    changes: list[str] = []
    for d in expand(defs):
        kind = kind_of(d)
        _check_names_free(reg, d)
        old = getattr(reg, _ATTR[kind]).get(d.name)
        if isinstance(d, Entity) and old is not None and tuple(old.join_keys) != tuple(d.join_keys):
            raise SchemaConflictError(
                f"entity {d.name!r} has join keys {list(old.join_keys)}; changing them to {list(d.join_keys)} "
                "would orphan stored rows",
                view=d.name,
            )
        if isinstance(d, FeatureView):
            changes += _migrate_view(conn, d, old)
        elif isinstance(d, StreamFeatureView):
            changes += _migrate_stream(conn, reg, d)
        spec = json.dumps(to_spec(d), sort_keys=True)
        prev = conn.execute(f"SELECT spec FROM {REGISTRY_TABLE} WHERE kind = ? AND name = ?", (kind, d.name)).fetchone()
        if prev is None or prev[0] != spec:
            conn.execute(
                f"INSERT INTO {REGISTRY_TABLE} (kind, name, spec, updated_us) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(kind, name) DO UPDATE SET spec = excluded.spec, updated_us = excluded.updated_us",
                (kind, d.name, spec, now_us),
            )
            changes.append(f"{'updated' if prev else 'added'} {kind.replace('_', ' ')} {d.name}")
        reg.add(d)
    return changes


def _migrate_view(conn: sqlite3.Connection, v: FeatureView, old: FeatureView | None) -> list[str]:
    table = view_table(v.name)
    cols = _columns(conn, table)
    changes = []
    if not cols:
        key_cols = ", ".join(quote_ident(k) for k in v.join_keys)
        feats = "".join(f", {quote_ident(f.name)} {f.type.sql_type}" for f in v.schema)
        conn.execute(
            f"CREATE TABLE {table} ({key_cols}{feats}, event_ts INTEGER NOT NULL, written_us INTEGER NOT NULL, "
            f"PRIMARY KEY ({key_cols})) WITHOUT ROWID"
        )
        changes.append(f"created table for feature view {v.name}")
    else:
        if old is not None and old.join_keys != v.join_keys:
            raise SchemaConflictError(
                f"feature view {v.name!r}: join keys {list(old.join_keys)} cannot change to {list(v.join_keys)} "
                "(stored rows are keyed by them); use a new view name",
                view=v.name,
            )
        old_types = {f.name: f.dtype for f in old.schema} if old is not None else {}
        for f in v.schema:
            if f.name in old_types and old_types[f.name] != f.dtype:
                raise SchemaConflictError(
                    f"feature view {v.name!r}: feature {f.name!r} is {old_types[f.name]}; changing it to {f.dtype} "
                    "is not supported (stored values would not match); add a new feature instead",
                    view=v.name,
                    feature=f.name,
                )
            if f.name in cols and cols[f.name] != f.type.sql_type:
                raise SchemaConflictError(
                    f"feature view {v.name!r}: column {f.name!r} is stored as {cols[f.name]}, not {f.dtype}",
                    view=v.name,
                    feature=f.name,
                )
            if f.name not in cols:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(f.name)} {f.type.sql_type}")
                changes.append(f"added feature {v.name}:{f.name} ({f.dtype})")
    if v.max_rows is not None:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {quote_ident(f'fv__{v.name}__written')} ON {table} (written_us)")
    return changes


def _migrate_stream(conn: sqlite3.Connection, reg: Registry, v: StreamFeatureView) -> list[str]:
    table = stream_table(v.source)
    for other in reg.stream_views.values():
        if other.source != v.source or other.name == v.name:
            continue
        if other.join_keys != v.join_keys:
            raise SchemaConflictError(
                f"stream feature view {v.name!r}: stream {v.source!r} is keyed by {list(other.join_keys)} "
                f"(view {other.name!r}), not {list(v.join_keys)}",
                view=v.name,
            )
        theirs = {f.name: f.dtype for f in other.schema}
        for f in v.schema:
            if f.name in theirs and theirs[f.name] != f.dtype:
                raise SchemaConflictError(
                    f"stream feature view {v.name!r}: event field {f.name!r} of stream {v.source!r} is "
                    f"{theirs[f.name]} in view {other.name!r}, not {f.dtype}",
                    view=v.name,
                    feature=f.name,
                )
    cols = _columns(conn, table)
    changes = []
    keys = ", ".join(quote_ident(k) for k in v.join_keys)
    if not cols:
        fields = "".join(f", {quote_ident(f.name)} {f.type.sql_type}" for f in v.schema)
        conn.execute(f"CREATE TABLE {table} ({keys}, event_ts INTEGER NOT NULL{fields})")
        conn.execute(f"CREATE INDEX {quote_ident(f'ev__{v.source}__key_ts')} ON {table} ({keys}, event_ts)")
        conn.execute(f"CREATE INDEX {quote_ident(f'ev__{v.source}__ts')} ON {table} (event_ts)")
        changes.append(f"created event log for stream {v.source}")
        return changes
    key_cols = [c for c in cols if c != "event_ts"][: len(v.join_keys)]
    if tuple(key_cols) != v.join_keys:
        raise SchemaConflictError(
            f"stream feature view {v.name!r}: stream {v.source!r} is keyed by {key_cols}, not {list(v.join_keys)}",
            view=v.name,
        )
    for f in v.schema:
        if f.name in cols and cols[f.name] != f.type.sql_type:
            raise SchemaConflictError(
                f"stream feature view {v.name!r}: event field {f.name!r} is stored as {cols[f.name]}, not {f.dtype}",
                view=v.name,
                feature=f.name,
            )
        if f.name not in cols:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote_ident(f.name)} {f.type.sql_type}")
            changes.append(f"added event field {v.source}.{f.name} ({f.dtype})")
    return changes
