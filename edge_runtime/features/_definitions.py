"""Feature definitions: entities, fields, feature views, services, request sources, on-demand and stream views.

Every definition is a frozen keyword-only dataclass validated in ``__post_init__``: a bad definition raises
:class:`~edge_runtime.DefinitionError` naming the definition, the attribute and what was expected, at the line that
built it rather than at ``apply`` time. The shapes follow Feast's so code carries over.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._def_checks import RESERVED, _check_name, _duration, _error, _seq, _set, check_distinct
from ._dtypes import DType, parse_dtype

AGG_FUNCTIONS = ("count", "sum", "mean", "min", "max")

UDF = Callable[[dict[str, list[Any]]], Mapping[str, Sequence[Any]]]


@dataclass(frozen=True, kw_only=True)
class Entity:
    """A thing features describe (a user, a device); ``join_keys`` are the columns that identify one.

    Join-key values are ints or strings. ``join_keys`` defaults to ``[name]``.
    """

    name: str
    join_keys: Sequence[str] = ()
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        keys = _seq(self.join_keys, "entity", "join_keys", self.name) or (self.name,)
        for k in keys:
            _check_name("join key", k, attr="join_keys", owner=f"entity {self.name!r}")
            if k.lower() in RESERVED:
                raise _error(
                    f"entity {self.name!r}: join key {k!r} is reserved (the store uses {k.lower()!r})",
                    key="join_keys",
                    expected=f"a name other than {sorted(RESERVED)} in any letter case",
                )
        if len(set(keys)) != len(keys):
            raise _error(f"entity {self.name!r}: join keys repeat", key="join_keys", expected="unique")
        check_distinct(f"entity {self.name!r}", [("join key", k) for k in keys], key="join_keys")
        _set(self, "join_keys", keys)


@dataclass(frozen=True, kw_only=True)
class Field:
    """One named, typed column: ``dtype`` is ``int64``, ``float32``, ``float64``, ``bool``, ``string``, ``bytes``
    or ``float32[N]``. ``allow_nan`` lets float values be NaN (refused by default)."""

    name: str
    dtype: str
    allow_nan: bool = False

    def __post_init__(self) -> None:
        _check_name("field", self.name)
        if self.name.lower() in RESERVED:
            raise _error(
                f"field name {self.name!r} is reserved (the store uses {self.name.lower()!r})",
                key="name",
                expected=f"not one of {sorted(RESERVED)} in any letter case",
            )
        try:
            parsed = parse_dtype(self.dtype)
        except ValueError as exc:
            raise _error(f"field {self.name!r}: {exc}", key="dtype", expected="a dtype") from None
        _set(self, "dtype", parsed.name)
        if not isinstance(self.allow_nan, bool):
            raise _error(f"field {self.name!r}: allow_nan must be a bool", key="allow_nan", expected="bool")

    @property
    def type(self) -> DType:
        """The parsed dtype."""
        return parse_dtype(self.dtype)


def _schema(value: object, kind: str, owner: str, *, reserved: Sequence[str] = ()) -> tuple[Field, ...]:
    fields = _seq(value, kind, "schema", owner)
    seen: set[str] = set()
    for f in fields:
        if not isinstance(f, Field):
            raise _error(
                f"{kind} {owner!r}: schema items must be Field, got {type(f).__name__}", key="schema", expected="Field"
            )
        if f.name in seen:
            raise _error(f"{kind} {owner!r}: field {f.name!r} repeats", key="schema", expected="unique")
        if f.name in reserved:
            raise _error(
                f"{kind} {owner!r}: field {f.name!r} is also a join key", key="schema", expected="a feature name"
            )
        seen.add(f.name)
    check_distinct(
        f"{kind} {owner!r}", [*(("join key", k) for k in reserved), *(("field", f.name) for f in fields)], key="schema"
    )
    return fields


def _entities(value: object, kind: str, owner: str) -> tuple[Entity, ...]:
    ents = _seq(value, kind, "entities", owner)
    if not ents:
        raise _error(f"{kind} {owner!r}: needs at least one entity", key="entities", expected="[Entity]")
    for e in ents:
        if not isinstance(e, Entity):
            raise _error(
                f"{kind} {owner!r}: entities must be Entity objects, got {type(e).__name__}",
                key="entities",
                expected="Entity",
            )
    keys = [k for e in ents for k in e.join_keys]
    if len(set(keys)) != len(keys):
        raise _error(f"{kind} {owner!r}: entities share a join key", key="entities", expected="distinct")
    check_distinct(f"{kind} {owner!r}", [("join key", k) for k in keys], key="entities")
    return ents


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """Features of one or more entities, written in batches and read by key.

    ``ttl`` (timedelta or seconds; None = never expires) is enforced on read. ``max_rows`` bounds the view: after a
    write, the least recently written entities beyond it are evicted in the same transaction.
    """

    name: str
    entities: Sequence[Entity]
    schema: Sequence[Field]
    ttl: dt.timedelta | float | None = None
    max_rows: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        ents = _entities(self.entities, "feature view", self.name)
        _set(self, "entities", ents)
        keys = [k for e in ents for k in e.join_keys]
        fields = _schema(self.schema, "feature view", self.name, reserved=keys)
        if not fields:
            raise _error(f"feature view {self.name!r}: schema is empty", key="schema", expected="[Field]")
        _set(self, "schema", fields)
        if self.ttl is not None:
            _set(self, "ttl", _duration(self.ttl, kind="feature view", owner=self.name, attr="ttl"))
        if self.max_rows is not None and (
            isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int) or self.max_rows < 1
        ):
            raise _error(
                f"feature view {self.name!r}: max_rows must be a positive int, got {self.max_rows!r}",
                key="max_rows",
                expected="an int >= 1 or None",
            )

    @property
    def join_keys(self) -> tuple[str, ...]:
        """All join keys of the view's entities, in order."""
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def features(self) -> tuple[Field, ...]:
        """The view's features (its schema)."""
        return tuple(self.schema)


@dataclass(frozen=True, kw_only=True)
class RequestSource:
    """Data that arrives with the request (in the entity rows) and feeds on-demand feature views."""

    name: str
    schema: Sequence[Field]

    def __post_init__(self) -> None:
        _check_name("request source", self.name)
        _set(self, "schema", _schema(self.schema, "request source", self.name))


@dataclass(frozen=True, kw_only=True)
class Aggregation:
    """A windowed aggregate of one event column: ``function`` is count, sum, mean, min or max over ``window``
    (timedelta or seconds). ``name`` defaults to ``<column>_<function>_<window>`` (e.g. ``amount_sum_10m``);
    ``column`` may be None for ``count`` (count events)."""

    column: str | None
    function: str
    window: dt.timedelta | float
    name: str | None = None

    def __post_init__(self) -> None:
        if self.function not in AGG_FUNCTIONS:
            raise _error(
                f"aggregation function {self.function!r} is unknown",
                key="function",
                expected=f"one of {', '.join(AGG_FUNCTIONS)}",
            )
        if self.column is None and self.function != "count":
            raise _error(f"aggregation {self.function!r} needs a column", key="column", expected="an event field name")
        if self.column is not None:
            _check_name("aggregation", self.column, attr="column")
        window = _duration(self.window, kind="aggregation", owner=f"{self.column}:{self.function}", attr="window")
        _set(self, "window", window)
        if self.name is None:
            _set(self, "name", f"{self.column or 'events'}_{self.function}_{window_label(window)}")
        _check_name("aggregation", self.name)

    @property
    def window_us(self) -> int:
        """The window in microseconds."""
        w = self.window
        assert isinstance(w, dt.timedelta)
        return (w.days * 86_400 + w.seconds) * 1_000_000 + w.microseconds


def window_label(window: dt.timedelta) -> str:
    """``600 s`` → ``10m``, ``3600 s`` → ``1h``, ``86400 s`` → ``1d``, else seconds."""
    secs = window.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{int(window / dt.timedelta(microseconds=1))}us"


@dataclass(frozen=True, kw_only=True)
class StreamFeatureView:
    """Windowed aggregates of on-device events pushed to stream ``source`` with ``store.push_events``.

    ``schema`` declares the event fields; ``aggregations`` the features served, computed as of the store's clock.
    """

    name: str
    entities: Sequence[Entity]
    source: str
    schema: Sequence[Field]
    aggregations: Sequence[Aggregation]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("stream feature view", self.name)
        _check_name("stream", self.source, attr="source", owner=f"stream feature view {self.name!r}")
        ents = _entities(self.entities, "stream feature view", self.name)
        _set(self, "entities", ents)
        keys = [k for e in ents for k in e.join_keys]
        fields = _schema(self.schema, "stream feature view", self.name, reserved=keys)
        _set(self, "schema", fields)
        aggs = _seq(self.aggregations, "stream feature view", "aggregations", self.name)
        if not aggs:
            raise _error(
                f"stream feature view {self.name!r}: needs at least one aggregation",
                key="aggregations",
                expected="[Aggregation]",
            )
        by_name = {f.name: f for f in fields}
        names: set[str] = set()
        for a in aggs:
            if not isinstance(a, Aggregation):
                raise _error(
                    f"stream feature view {self.name!r}: aggregations must be Aggregation objects",
                    key="aggregations",
                    expected="Aggregation",
                )
            if a.column is not None:
                f = by_name.get(a.column)
                if f is None:
                    raise _error(
                        f"stream feature view {self.name!r}: aggregation column {a.column!r} is not in the schema",
                        key="aggregations",
                        expected=f"one of {sorted(by_name)}",
                    )
                if a.function != "count" and not f.type.is_numeric:
                    raise _error(
                        f"stream feature view {self.name!r}: {a.function} needs a numeric column, "
                        f"{a.column!r} is {f.dtype}",
                        key="aggregations",
                        expected="an int64, float or bool column",
                    )
            assert a.name is not None
            if a.name in names:
                raise _error(
                    f"stream feature view {self.name!r}: aggregation name {a.name!r} repeats",
                    key="aggregations",
                    expected="unique names",
                )
            names.add(a.name)
        _set(self, "aggregations", aggs)

    @property
    def join_keys(self) -> tuple[str, ...]:
        """All join keys of the view's entities, in order."""
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def features(self) -> tuple[Field, ...]:
        """The served aggregates as fields (count → int64, mean → float64, others follow the column)."""
        by_name = {f.name: f for f in self.schema}
        out = []
        for a in self.aggregations:
            assert a.name is not None
            if a.function == "count":
                dtype = "int64"
            elif a.function == "mean":
                dtype = "float64"
            else:
                col = by_name[a.column or ""].dtype
                dtype = "int64" if col == "bool" else ("float64" if col == "float32" else col)
            out.append(Field(name=a.name, dtype=dtype))
        return tuple(out)

    @property
    def max_window_us(self) -> int:
        """The longest window, in microseconds (older events can be pruned)."""
        return max(a.window_us for a in self.aggregations)


SourceView = FeatureView | StreamFeatureView | RequestSource


@dataclass(frozen=True, kw_only=True)
class OnDemandFeatureView:
    """Features computed at read time by ``udf`` from looked-up features and request data.

    ``udf`` receives a dict of input columns (lists: every feature of the source views under its own name, and
    every request field) and returns a dict of output columns matching ``schema``.
    """

    name: str
    sources: Sequence[SourceView]
    schema: Sequence[Field]
    udf: UDF
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("on-demand feature view", self.name)
        sources = _seq(self.sources, "on-demand feature view", "sources", self.name)
        if not sources:
            raise _error(
                f"on-demand feature view {self.name!r}: needs at least one source", key="sources", expected="[source]"
            )
        inputs: dict[str, str] = {}
        for s in sources:
            if not isinstance(s, (FeatureView, StreamFeatureView, RequestSource)):
                raise _error(
                    f"on-demand feature view {self.name!r}: a source must be a FeatureView, StreamFeatureView or "
                    f"RequestSource, got {type(s).__name__}",
                    key="sources",
                    expected="FeatureView, StreamFeatureView or RequestSource",
                )
            fields = s.schema if isinstance(s, RequestSource) else s.features
            for f in fields:
                if f.name in inputs:
                    raise _error(
                        f"on-demand feature view {self.name!r}: input {f.name!r} comes from both "
                        f"{inputs[f.name]!r} and {s.name!r}",
                        key="sources",
                        expected="sources whose field names do not clash",
                    )
                inputs[f.name] = s.name
        _set(self, "sources", sources)
        fields = _schema(self.schema, "on-demand feature view", self.name)
        if not fields:
            raise _error(f"on-demand feature view {self.name!r}: schema is empty", key="schema", expected="[Field]")
        _set(self, "schema", fields)
        if not callable(self.udf):
            raise _error(
                f"on-demand feature view {self.name!r}: udf must be callable", key="udf", expected="a function"
            )

    @property
    def features(self) -> tuple[Field, ...]:
        """The computed features (its schema)."""
        return tuple(self.schema)

    @property
    def udf_ref(self) -> str | None:
        """``module:qualname`` of the udf when it can be imported again (recorded in the registry)."""
        module = getattr(self.udf, "__module__", None)
        qualname = getattr(self.udf, "__qualname__", "")
        if not module or "<" in qualname:
            return None
        return f"{module}:{qualname}"


def on_demand_feature_view(
    *, sources: Sequence[SourceView], schema: Sequence[Field], name: str | None = None, description: str = ""
) -> Callable[[UDF], OnDemandFeatureView]:
    """Decorator: turn a function of input columns into an :class:`OnDemandFeatureView` named after it."""

    def wrap(fn: UDF) -> OnDemandFeatureView:
        return OnDemandFeatureView(
            name=name or fn.__name__, sources=sources, schema=schema, udf=fn, description=description
        )

    return wrap


def import_udf(ref: str) -> UDF:
    """Import ``module:qualname``; the result must be a function or an :class:`OnDemandFeatureView`."""
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise ValueError(f"udf reference {ref!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import udf {ref!r}: {exc}") from exc
    if isinstance(obj, OnDemandFeatureView):
        return obj.udf
    if not callable(obj):
        raise ValueError(f"udf {ref!r} is not callable")
    return obj


@dataclass(frozen=True, kw_only=True)
class FeatureService:
    """A named set of features a model reads: ``"view:feature"`` strings and/or whole views."""

    name: str
    features: Sequence[Any] = field(default_factory=tuple)
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature service", self.name)
        refs: list[str] = []
        for item in _seq(self.features, "feature service", "features", self.name):
            if isinstance(item, (FeatureView, StreamFeatureView, OnDemandFeatureView)):
                refs.extend(f"{item.name}:{f.name}" for f in item.features)
            elif isinstance(item, str) and item.count(":") == 1 and all(item.split(":")):
                refs.append(item)
            else:
                raise _error(
                    f"feature service {self.name!r}: bad feature {item!r}",
                    key="features",
                    expected="'view:feature' strings or feature views",
                )
        if not refs:
            raise _error(f"feature service {self.name!r}: has no features", key="features", expected="at least one")
        _set(self, "features", tuple(dict.fromkeys(refs)))


Definition = Entity | FeatureView | StreamFeatureView | OnDemandFeatureView | FeatureService | RequestSource
View = FeatureView | StreamFeatureView | OnDemandFeatureView
