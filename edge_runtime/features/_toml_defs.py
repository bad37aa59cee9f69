"""Loading feature definitions from a TOML file.

```toml
[[entity]]
name = "user"
join_keys = ["user_id"]

[[feature_view]]
name = "user_profile"
entities = ["user"]
ttl = "1d"                      # seconds or "30s" / "10m" / "1h" / "2d"; absent = never expires
max_rows = 100000               # optional budget
schema = [{ name = "age", dtype = "int64" }, { name = "score", dtype = "float32", allow_nan = true }]

[[request_source]]
name = "checkout"
schema = [{ name = "amount", dtype = "float64" }]

[[stream_feature_view]]
name = "user_orders"
entities = ["user"]
source = "orders"
schema = [{ name = "amount", dtype = "float64" }]
aggregations = [{ column = "amount", function = "sum", window = "10m" }, { function = "count", window = "1h" }]

[[on_demand_feature_view]]
name = "spend_ratio"
sources = ["user_orders", "checkout"]
schema = [{ name = "ratio", dtype = "float64" }]
udf = "my_app.features:spend_ratio"   # module:function

[[feature_service]]
name = "fraud_v1"
features = ["user_profile:age", "spend_ratio:ratio"]
```

Every error is a :class:`~edge_runtime.ConfigError` naming the file, the dotted key and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edge_runtime._errors import DefinitionError
from edge_runtime._toml import TomlTable, load_toml

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
    import_udf,
)

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SECTIONS = frozenset(
    {"entity", "feature_view", "request_source", "stream_feature_view", "on_demand_feature_view", "feature_service"}
)


def parse_duration(t: TomlTable, name: str) -> float | None:
    """A duration key: a number of seconds or a string like ``"10m"``; None when absent."""
    value = t.get(name, (int, float, str), None)
    if value is None:
        return None
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise t.error(name, f"bad duration {value!r}", expected='seconds or a string like "30s", "10m", "1h", "2d"')
        return float(m.group(1)) * _UNITS[m.group(2)]
    return float(value)


def _build(t: TomlTable, cls: Any, **kwargs: Any) -> Any:
    try:
        return cls(**kwargs)
    except DefinitionError as exc:
        key = t.key(exc.key) if exc.key and exc.key in kwargs else t.path
        message = str(exc)
        if exc.key and message.startswith(f"{exc.key}: "):
            message = message[len(exc.key) + 2 :]
        raise DefinitionError(message, file=t.file, key=key, expected=exc.expected, got=exc.got) from None


def _fields(t: TomlTable, name: str = "schema") -> list[Field]:
    out = []
    for ft in t.tables(name):
        ft.check_unknown({"name", "dtype", "allow_nan"})
        out.append(
            _build(
                ft,
                Field,
                name=ft.get("name", str),
                dtype=ft.get("dtype", str),
                allow_nan=ft.get("allow_nan", bool, False),
            )
        )
    return out


def _strings(t: TomlTable, name: str) -> list[str]:
    values = t.get(name, list)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise t.error(f"{name}[{i}]", f"expected a string, got {type(v).__name__} {v!r}", expected="string")
    return values


def _lookup(t: TomlTable, name: str, i: int, ref: str, table: dict[str, Any], kind: str) -> Any:
    if ref not in table:
        shown = ", ".join(sorted(table)) or "(none defined above)"
        raise t.error(f"{name}[{i}]", f"unknown {kind} {ref!r}; defined: {shown}", expected=f"the name of a {kind}")
    return table[ref]


def load_definitions(path: str | Path) -> list[Definition]:
    """Read the definitions in TOML file ``path`` (see the module docs for the format), in file order of kinds."""
    root = TomlTable(load_toml(path), file=path)
    root.check_unknown(_SECTIONS)
    entities: dict[str, Entity] = {}
    sources: dict[str, Any] = {}
    out: list[Definition] = []
    for t in root.tables("entity"):
        t.check_unknown({"name", "join_keys", "description"})
        name = t.get("name", str)
        e = _build(
            t,
            Entity,
            name=name,
            join_keys=_strings(t, "join_keys") if "join_keys" in t.data else (),
            description=t.get("description", str, ""),
        )
        entities[name] = e
        out.append(e)
    for t in root.tables("feature_view"):
        t.check_unknown({"name", "entities", "schema", "ttl", "max_rows", "description"})
        ents = [_lookup(t, "entities", i, r, entities, "entity") for i, r in enumerate(_strings(t, "entities"))]
        v = _build(
            t,
            FeatureView,
            name=t.get("name", str),
            entities=ents,
            schema=_fields(t),
            ttl=parse_duration(t, "ttl"),
            max_rows=t.get("max_rows", int, None),
            description=t.get("description", str, ""),
        )
        sources[v.name] = v
        out.append(v)
    for t in root.tables("request_source"):
        t.check_unknown({"name", "schema"})
        r = _build(t, RequestSource, name=t.get("name", str), schema=_fields(t))
        sources[r.name] = r
        out.append(r)
    for t in root.tables("stream_feature_view"):
        t.check_unknown({"name", "entities", "source", "schema", "aggregations", "description"})
        ents = [_lookup(t, "entities", i, r, entities, "entity") for i, r in enumerate(_strings(t, "entities"))]
        aggs = []
        for at in t.tables("aggregations"):
            at.check_unknown({"column", "function", "window", "name"})
            window = parse_duration(at, "window")
            if window is None:
                raise at.error("window", "required key is missing", expected='seconds or a string like "10m"')
            aggs.append(
                _build(
                    at,
                    Aggregation,
                    column=at.get("column", str, None),
                    function=at.get("function", str),
                    window=window,
                    name=at.get("name", str, None),
                )
            )
        v = _build(
            t,
            StreamFeatureView,
            name=t.get("name", str),
            entities=ents,
            source=t.get("source", str),
            schema=_fields(t),
            aggregations=aggs,
            description=t.get("description", str, ""),
        )
        sources[v.name] = v
        out.append(v)
    for t in root.tables("on_demand_feature_view"):
        t.check_unknown({"name", "sources", "schema", "udf", "description"})
        srcs = [_lookup(t, "sources", i, r, sources, "source") for i, r in enumerate(_strings(t, "sources"))]
        ref = t.get("udf", str)
        try:
            udf = import_udf(ref)
        except ValueError as exc:
            raise t.error("udf", str(exc), expected="'package.module:function' of an importable function") from None
        o = _build(
            t,
            OnDemandFeatureView,
            name=t.get("name", str),
            sources=srcs,
            schema=_fields(t),
            udf=udf,
            description=t.get("description", str, ""),
        )
        sources[o.name] = o
        out.append(o)
    for t in root.tables("feature_service"):
        t.check_unknown({"name", "features", "description"})
        out.append(
            _build(
                t,
                FeatureService,
                name=t.get("name", str),
                features=_strings(t, "features"),
                description=t.get("description", str, ""),
            )
        )
    return out
