"""Online reads: a compiled plan per feature list, executed with prepared statements.

Compiling resolves the feature references, the SQL of every view involved, the decoders and the output order once;
the store caches plans by ``(features, full_feature_names)``, so a read costs the SQL plus a few list operations.
Lookups of many entities use ``IN (...)`` with the number of parameters rounded up to a power of two (padding
repeats a key) so that only a handful of distinct statements ever reach sqlite3's statement cache.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime._errors import EdgeRuntimeError, FeatureStoreError, UnknownNameError
from edge_runtime._sqlite import in_condition, quote_ident

from ._definitions import FeatureView, Field, OnDemandFeatureView, RequestSource, StreamFeatureView
from ._dtypes import DType, ValueCheckError
from ._entity_rows import EntityRowError, entity_columns, key_column, strict_keys
from ._registry import Registry, stream_table, view_table
from ._response import EntityRead, FieldStatus, OnlineResponse, Output
from ._stream import StreamQuery

MAX_IN = 512  # keys per IN (...) statement; bounded so SQL strings and parameter lists stay small


@dataclass
class ViewPart:
    """Rows of one feature view: ``cols`` are the fetched features; each row ends with ``event_ts``."""

    view: FeatureView
    cols: list[str]
    ttl_us: int
    sql_one: str
    sql_many_head: str
    keys: tuple[str, ...]
    sql_many: dict[int, str] = field(default_factory=dict)

    def many(self, size: int) -> str:
        """The ``IN`` query for ``size`` (a power of two) keys."""
        sql = self.sql_many.get(size)
        if sql is None:
            sql = self.sql_many[size] = f"{self.sql_many_head} WHERE {in_condition(self.keys, size)}"
        return sql


@dataclass
class OdfvPart:
    """An on-demand view: its inputs come from other parts (by part index and position) and the request."""

    view: OnDemandFeatureView
    inputs: list[tuple[str, int, int, Any]]  # (input name, part, position, decoder)
    request_fields: list[tuple[str, DType]]


Part = Any  # ViewPart | StreamQuery | OdfvPart


@dataclass
class ReadPlan:
    """Everything a read needs, resolved once per feature list."""

    parts: list[Part]
    outputs: list[Output]
    join_keys: tuple[str, ...]
    n_data_parts: int
    #: The one feature view of a plan that reads nothing else (the common case), for :func:`execute_one`.
    single: ViewPart | None = None
    #: Per part: (index of event_ts in its rows, TTL in µs) for a feature view with a TTL, else None.
    expiry: tuple[tuple[int, int] | None, ...] = ()
    #: Whether an on-demand view is part of the plan (single-entity reads then take the general path).
    has_odfv: bool = False


def parse_ref(ref: object, reg: Registry) -> tuple[Any, str]:
    """``"view:feature"`` → (view, feature name); unknown names raise :class:`UnknownNameError`."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise FeatureStoreError(f"feature reference {ref!r} must look like 'view:feature'")
    view_name, feat = ref.split(":")
    view = reg.any_view(view_name)
    names = [f.name for f in view.features]
    if feat not in names:
        raise UnknownNameError("feature", ref, [f"{view_name}:{n}" for n in names])
    return view, feat


def compile_plan(reg: Registry, refs: Sequence[str], full_feature_names: bool) -> ReadPlan:
    """Resolve ``refs`` into a :class:`ReadPlan`."""
    if not refs:
        raise FeatureStoreError("no features requested; pass 'view:feature' strings or a FeatureService")
    wanted: list[tuple[Any, str]] = [parse_ref(r, reg) for r in refs]
    parts: list[Part] = []
    index: dict[str, int] = {}
    needed: dict[str, list[str]] = {}

    def need(view: Any, feat: str) -> None:
        cols = needed.setdefault(view.name, [])
        if feat not in cols:
            cols.append(feat)

    odfvs: list[OnDemandFeatureView] = []
    for view, feat in wanted:
        if isinstance(view, OnDemandFeatureView):
            if view not in odfvs:
                odfvs.append(view)
            for src in view.sources:
                if not isinstance(src, RequestSource):
                    for f in src.features:
                        need(src, f.name)
        else:
            need(view, feat)
    data_views = [reg.any_view(name) for name in needed]
    for view in data_views:
        index[view.name] = len(parts)
        if isinstance(view, FeatureView):
            parts.append(_view_part(view, needed[view.name]))
        else:
            assert isinstance(view, StreamFeatureView)
            parts.append(StreamQuery.build(view, stream_table(view.source), needed[view.name]))
    n_data = len(parts)
    for odfv in odfvs:
        index[odfv.name] = len(parts)
        inputs = []
        request_fields = []
        for src in odfv.sources:
            if isinstance(src, RequestSource):
                request_fields += [(f.name, f.type) for f in src.schema]
                continue
            part = parts[index[src.name]]
            for f in src.features:
                pos = part.cols.index(f.name)
                inputs.append((f.name, index[src.name], pos, _decoder(f) if isinstance(src, FeatureView) else None))
        parts.append(OdfvPart(view=odfv, inputs=inputs, request_fields=request_fields))
    outputs: list[Output] = []
    seen: dict[str, str] = {}
    for (view, feat), ref in zip(wanted, refs, strict=False):
        name = f"{view.name}__{feat}" if full_feature_names else feat
        if name in seen and seen[name] != ref:
            raise FeatureStoreError(
                f"features {seen[name]!r} and {ref!r} would both be named {name!r}; pass full_feature_names=True"
            )
        if name in seen:
            continue
        seen[name] = ref
        part = parts[index[view.name]]
        dtype = next(f.type for f in view.features if f.name == feat)
        if isinstance(part, OdfvPart):
            pos = [f.name for f in view.features].index(feat)
            outputs.append((name, index[view.name], pos, None, dtype))
        else:
            decoder = None
            if isinstance(part, ViewPart):
                fld = next(f for f in view.features if f.name == feat)
                decoder = _decoder(fld)
            outputs.append((name, index[view.name], part.cols.index(feat), decoder, dtype))
    keys: list[str] = []
    for p in parts[:n_data]:
        keys += [k for k in p.keys if k not in keys]
    single = parts[0] if len(parts) == 1 and isinstance(parts[0], ViewPart) else None
    expiry = tuple((len(p.cols), p.ttl_us) if isinstance(p, ViewPart) and p.ttl_us else None for p in parts)
    return ReadPlan(
        parts=parts,
        outputs=outputs,
        join_keys=tuple(keys),
        n_data_parts=n_data,
        single=single,
        expiry=expiry,
        has_odfv=len(parts) > n_data,
    )


def _decoder(f: Field) -> Any:
    # NaN cannot be stored in a SQLite REAL (it becomes NULL), so allow_nan floats store it as the text 'NaN'.
    if f.allow_nan and f.type.kind in ("float32", "float64"):
        return float
    return f.type.decoder()


def _view_part(view: FeatureView, cols: list[str]) -> ViewPart:
    table = view_table(view.name)
    keys = view.join_keys
    select = ", ".join(quote_ident(c) for c in cols)
    where_one = " AND ".join(f"{quote_ident(k)} = ?" for k in keys)
    key_sel = ", ".join(quote_ident(k) for k in keys)
    ttl = view.ttl
    ttl_us = 0 if ttl is None else int(ttl.total_seconds() * 1_000_000)  # type: ignore[union-attr]
    return ViewPart(
        view=view,
        cols=cols,
        ttl_us=ttl_us,
        sql_one=f"SELECT {select}, event_ts FROM {table} WHERE {where_one}",
        sql_many_head=f"SELECT {select}, event_ts, {key_sel} FROM {table}",
        keys=keys,
    )


def fetch_view(conn: sqlite3.Connection, part: ViewPart, keycols: list[list[Any]], n: int) -> list[Any]:
    """The rows of ``part`` aligned with the entity rows (None where the entity has no row)."""
    if n == 1:
        return [conn.execute(part.sql_one, [c[0] for c in keycols]).fetchone()]
    nk = len(keycols)
    found: dict[Any, Any] = {}
    if nk == 1:
        wanted: list[Any] = list(dict.fromkeys(keycols[0]))
    else:
        wanted = list(dict.fromkeys(zip(*keycols, strict=False)))
    ncols = len(part.cols) + 1
    for start in range(0, len(wanted), MAX_IN):
        chunk = wanted[start : start + MAX_IN]
        size = 1 << (len(chunk) - 1).bit_length()
        chunk = chunk + [chunk[-1]] * (size - len(chunk))
        params = chunk if nk == 1 else [v for t in chunk for v in t]
        cur = conn.execute(part.many(size), params)
        if nk == 1:
            for r in cur:
                found[r[ncols]] = r
        else:
            for r in cur:
                found[r[ncols:]] = r
    if nk == 1:
        return [found.get(k) for k in keycols[0]]
    return [found.get(k) for k in zip(*keycols, strict=False)]


def run_odfv(part: OdfvPart, rows: list[list[Any]], cols: dict[str, list[Any]], n: int) -> list[Any]:
    """Call the view's function on its input columns and check what it returns; one tuple per entity."""
    view = part.view
    inputs: dict[str, list[Any]] = {}
    for name, pidx, pos, dec in part.inputs:
        prow = rows[pidx]
        values = [r[pos] if r is not None else None for r in prow]
        inputs[name] = [dec(v) if v is not None else None for v in values] if dec else values
    for name, dtype in part.request_fields:
        given = cols.get(name)
        if given is None:
            raise EntityRowError(
                f"request data {name!r} for on-demand feature view {view.name!r} is missing",
                row=0,
                column=name,
            )
        try:
            dtype.encode_column(given, allow_nan=True, nullable=False)
        except ValueCheckError as exc:
            raise EntityRowError(str(exc), row=exc.index, column=name) from None
        inputs[name] = given
    try:
        result = view.udf(inputs)
    except EdgeRuntimeError:
        raise
    except Exception as exc:
        raise FeatureStoreError(f"on-demand feature view {view.name!r} failed: {exc!r}") from exc
    if not isinstance(result, Mapping):
        raise FeatureStoreError(
            f"on-demand feature view {view.name!r} returned {type(result).__name__}; expected a dict of columns"
        )
    declared = [f.name for f in view.schema]
    extra = [k for k in result if k not in declared]
    if extra:
        raise FeatureStoreError(
            f"on-demand feature view {view.name!r} returned undeclared columns {extra}; its schema has {declared}"
        )
    out_cols = []
    for f in view.schema:
        if f.name not in result:
            raise FeatureStoreError(f"on-demand feature view {view.name!r} did not return column {f.name!r}")
        raw: Any = result[f.name]
        col: list[Any] = raw.tolist() if isinstance(raw, np.ndarray) and f.type.kind != "vector" else list(raw)
        if len(col) != n:
            raise FeatureStoreError(
                f"on-demand feature view {view.name!r}: column {f.name!r} has {len(col)} values for {n} entity rows"
            )
        for i, v in enumerate(col):
            if v is None:
                continue
            try:
                f.type.encode_value(v, allow_nan=f.allow_nan)
            except ValueError as exc:
                raise FeatureStoreError(
                    f"on-demand feature view {view.name!r}: column {f.name!r}, row {i}: {exc}"
                ) from None
        if f.type.kind == "vector":
            col = [None if v is None else np.asarray(v, dtype=np.float32) for v in col]
        out_cols.append(col)
    return list(zip(*out_cols, strict=False))


def execute_one(plan: ReadPlan, conn: sqlite3.Connection, entity_row: dict[str, Any], now_us: int) -> OnlineResponse:
    """:func:`execute` for one entity row and a plan of one feature view: the hot path of online serving."""
    part = plan.single
    assert part is not None
    params = [entity_row.get(k) for k in part.keys]
    for v in params:
        t = type(v)
        if t is not int and t is not str:
            # Missing or unusual key: the general path converts it or raises the precise error.
            return execute(plan, conn, [entity_row], now_us, snapshot=True)
    try:
        r = conn.execute(part.sql_one, params).fetchone()
    except (OverflowError, UnicodeEncodeError):  # an int beyond int64 or a lone surrogate: the general path names it
        return execute(plan, conn, [entity_row], now_us, snapshot=True)
    expired = None
    ttl = part.ttl_us
    if ttl and r is not None and r[-1] < now_us - ttl:
        expired = {0}
        r = None
    return OnlineResponse(
        {k: [v] for k, v in entity_row.items()}, 1, plan.outputs, [[r]], [expired], expiry=plan.expiry
    )


def read_one(plan: ReadPlan, conn: sqlite3.Connection, entity_row: Mapping[str, Any], now_us: int) -> EntityRead:
    """One entity's features as flat lists, without building a response: the hot path of single-entity serving.

    Plans with on-demand views, and unusual key values (which need conversion or a precise error), take the
    general path and are flattened from its response.
    """
    if plan.has_odfv or not _plain_keys(plan.join_keys, entity_row):
        return flatten(execute(plan, conn, [dict(entity_row)], now_us, snapshot=True))
    parts = plan.parts
    snapshot = plan.n_data_parts > 1 and not conn.in_transaction
    fetched: list[Any] = []
    if snapshot:
        conn.execute("BEGIN")
    try:
        for part in parts:
            key = [entity_row[k] for k in part.keys]
            if isinstance(part, ViewPart):
                fetched.append(conn.execute(part.sql_one, key).fetchone())
            else:
                fetched.append(part.fetch_one(conn, key, now_us))
    except (OverflowError, UnicodeEncodeError):  # an int beyond int64 or a lone surrogate: the general path names it
        return flatten(execute(plan, conn, [dict(entity_row)], now_us, snapshot=False))
    finally:
        if snapshot:
            conn.execute("COMMIT")
    # Per part: its row (None when absent or past its TTL), the status its values get, and their TTL expiry.
    states = []
    metas = plan.expiry
    for pi, r in enumerate(fetched):
        meta = metas[pi] if pi < len(metas) else None
        if r is None:
            states.append((None, _NOT_FOUND, None))
        elif meta is None:
            states.append((r, _PRESENT, None))
        elif r[meta[0]] < now_us - meta[1]:
            states.append((None, _EXPIRED, None))
        else:
            states.append((r, _PRESENT, r[meta[0]] + meta[1]))
    values: list[Any] = []
    statuses: list[FieldStatus] = []
    expiry: list[int | None] = []
    for _name, pi, pos, dec, _ in plan.outputs:
        r, st, exp = states[pi]
        v = None if r is None else r[pos]
        if v is None:
            values.append(None)
            statuses.append(_NOT_FOUND if r is not None else st)
            expiry.append(None)
        else:
            values.append(v if dec is None else dec(v))
            statuses.append(st)
            expiry.append(exp)
    return EntityRead([o[0] for o in plan.outputs], values, statuses, expiry)


_PRESENT, _NOT_FOUND, _EXPIRED = FieldStatus.PRESENT, FieldStatus.NOT_FOUND, FieldStatus.OUTSIDE_MAX_AGE


def _plain_keys(keys: Sequence[str], row: Mapping[str, Any]) -> bool:
    for k in keys:
        t = type(row.get(k))
        if t is not int and t is not str:
            return False
    return True


def flatten(response: OnlineResponse) -> EntityRead:
    """The first row of a response as an :class:`EntityRead`."""
    names = response.feature_names
    st = response.statuses
    return EntityRead(
        names,
        [response.values(n)[0] for n in names],
        [st[n][0] for n in names],
        [response.expiry_us(n)[0] for n in names],
    )


def execute(
    plan: ReadPlan, conn: sqlite3.Connection, entity_rows: object, now_us: int, *, snapshot: bool
) -> OnlineResponse:
    """Run ``plan`` for ``entity_rows`` as of ``now_us``."""
    n, cols = entity_columns(entity_rows)
    keycache: dict[str, list[Any]] = {}
    rows: list[list[Any]] = []
    expired: list[set[int] | None] = []
    parts = plan.parts
    # Several statements (several views, or more keys than one IN holds) read inside one transaction, so they all
    # see the same WAL snapshot and never half of a concurrent batch.
    snapshot = snapshot and (plan.n_data_parts > 1 or n > MAX_IN) and not conn.in_transaction
    if snapshot:
        conn.execute("BEGIN")
    try:
        for part in parts:
            if isinstance(part, OdfvPart):
                rows.append(run_odfv(part, rows, cols, n))
                expired.append(None)
                continue
            keycols = []
            for k in part.keys:
                kc = keycache.get(k)
                if kc is None:
                    kc = keycache[k] = key_column(cols, k, n)
                keycols.append(kc)
            try:
                fetched = (
                    (
                        fetch_view(conn, part, keycols, n)
                        if isinstance(part, ViewPart)
                        else part.fetch(conn, keycols, n, now_us)
                    )
                    if n
                    else []
                )
            except OverflowError:  # an int key beyond int64 (the fast type check let it through)
                for k in part.keys:
                    strict_keys(cols[k], k)
                raise
            if isinstance(part, ViewPart):
                prow = fetched
                exp = None
                ttl = part.ttl_us
                if ttl:
                    cutoff = now_us - ttl
                    ets = len(part.cols)  # rows are (features..., event_ts[, keys...])
                    for i, r in enumerate(prow):
                        if r is not None and r[ets] < cutoff:
                            if exp is None:
                                exp = set()
                            exp.add(i)
                            prow[i] = None
                rows.append(prow)
                expired.append(exp)
            else:
                rows.append(fetched)
                expired.append(None)
    finally:
        if snapshot:
            conn.execute("COMMIT")
    return OnlineResponse(cols, n, plan.outputs, rows, expired, expiry=plan.expiry)
