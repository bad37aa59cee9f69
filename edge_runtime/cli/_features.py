"""`edge-runtime features` commands: apply definitions, list them, read and write rows, show statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_runtime._errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `features` commands to the top-level parser."""
    group = sub.add_parser(
        "features",
        help="manage an on-device feature store (a SQLite file)",
        description="Apply definitions to a feature store, list them, read and write rows, show statistics.",
    )
    cmds = group.add_subparsers(dest="features_command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("store", help="path of the feature store's SQLite file (created if missing)")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = cmds.add_parser(
        "apply", help="register the definitions of a TOML file", description="Register (and migrate to) definitions."
    )
    common(p)
    p.add_argument("definitions", help="TOML file of definitions (see docs/features.md)")
    p.set_defaults(handler=_apply)

    p = cmds.add_parser("ls", help="list entities, views, features and services", description="List definitions.")
    common(p)
    p.set_defaults(handler=_ls)

    p = cmds.add_parser(
        "get",
        help="read features for entities",
        description="Read features for one or more entities, with each value's status (PRESENT, NOT_FOUND, "
        "OUTSIDE_MAX_AGE).",
    )
    common(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--features", help="comma-separated 'view:feature' references")
    what.add_argument("--service", help="name of a registered feature service")
    p.add_argument(
        "--entity",
        action="append",
        required=True,
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="one entity row (join keys and request data); repeat for more rows. Values are JSON when they parse "
        "as JSON (1, 2.5, true), strings otherwise",
    )
    p.add_argument("--full-names", action="store_true", help="name features 'view__feature'")
    p.set_defaults(handler=_get)

    p = cmds.add_parser(
        "put",
        help="write rows to a feature view",
        description="Upsert rows (a JSON list of objects, or JSON lines) into a feature view. A row without "
        "event_timestamp gets the current time.",
    )
    common(p)
    p.add_argument("view", help="feature view name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--row", action="append", metavar="JSON", help="one row as a JSON object; repeat for more")
    src.add_argument("--file", help="a JSON or JSON-lines file of rows ('-' for stdin)")
    p.set_defaults(handler=_put)

    p = cmds.add_parser(
        "stats", help="rows, expired rows and event-time range per view", description="Show per-view statistics."
    )
    common(p)
    p.set_defaults(handler=_stats)


def _open(path: str, *, create: bool = False) -> Any:
    from edge_runtime.features import FeatureStore

    if not create and path != ":memory:" and not Path(path).exists():
        raise ConfigError(
            f"no feature store at {path!r}; create one with `edge-runtime features apply {path} DEFS.toml`",
            key="STORE",
            expected="an existing feature store file",
        )
    return FeatureStore(path)


def _apply(args: argparse.Namespace) -> int:
    from edge_runtime.features import load_definitions

    defs = load_definitions(args.definitions)
    with _open(args.store, create=True) as store:
        changes = store.apply(defs)
    if args.json:
        from ._output import print_json

        print_json({"definitions": len(defs), "changes": changes})
    else:
        for c in changes:
            print(c)
        print(f"{len(defs)} definitions applied, {len(changes)} changes")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from edge_runtime.features import (
        Entity,
        FeatureService,
        FeatureView,
        OnDemandFeatureView,
        RequestSource,
        StreamFeatureView,
    )

    rows = []
    with _open(args.store) as store:
        for d in store.definitions():
            row: dict[str, Any] = {"kind": "", "name": d.name, "keys": "", "features": "", "ttl_seconds": None}
            if isinstance(d, Entity):
                row.update(kind="entity", keys=",".join(d.join_keys))
            elif isinstance(d, RequestSource):
                row.update(kind="request_source", features=", ".join(f"{f.name}:{f.dtype}" for f in d.schema))
            elif isinstance(d, (FeatureView, StreamFeatureView, OnDemandFeatureView)):
                kind = {FeatureView: "feature_view", StreamFeatureView: "stream_feature_view"}.get(
                    type(d), "on_demand_feature_view"
                )
                row.update(kind=kind, features=", ".join(f"{f.name}:{f.dtype}" for f in d.features))
                if not isinstance(d, OnDemandFeatureView):
                    row["keys"] = ",".join(d.join_keys)
                if isinstance(d, FeatureView) and d.ttl is not None:
                    row["ttl_seconds"] = d.ttl.total_seconds()  # type: ignore[union-attr]
            elif isinstance(d, FeatureService):
                row.update(kind="service", features=", ".join(d.features))
            rows.append(row)
    from ._output import print_json, print_table

    if args.json:
        print_json(rows)
    else:
        print_table(rows, ["kind", "name", "keys", "features", "ttl_seconds"])
    return 0


def _parse_entity(text: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"bad entity {text!r}; expected KEY=VALUE pairs separated by commas (user_id=1,amount=2.5)",
                key="--entity",
                expected="KEY=VALUE pairs separated by commas",
                got=text,
            )
        try:
            row[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            row[key.strip()] = value
    return row


def _get(args: argparse.Namespace) -> int:
    entity_rows = [_parse_entity(e) for e in args.entity]
    with _open(args.store) as store:
        features: Any = args.service or [f.strip() for f in args.features.split(",") if f.strip()]
        resp = store.get_online_features(features, entity_rows, full_feature_names=args.full_names)
        data = resp.to_dict()
        statuses = {k: [s.name for s in v] for k, v in resp.statuses.items()}
    from ._output import print_json, print_table

    if args.json:
        print_json({"values": data, "statuses": statuses})
        return 0
    columns = list(data)
    rows = []
    for i in range(len(resp)):
        row = {}
        for c in columns:
            v = data[c][i]
            if v is None and c in statuses:
                v = f"<{statuses[c][i]}>"
            elif hasattr(v, "tolist"):
                v = json.dumps([round(x, 6) for x in v.tolist()])
            row[c] = v
        rows.append(row)
    print_table(rows, columns)
    return 0


def _read_rows(args: argparse.Namespace) -> list[Any]:
    if args.row:
        texts = [(f"--row {i}", t) for i, t in enumerate(args.row)]
        rows = []
        for where, t in texts:
            try:
                rows.append(json.loads(t))
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"invalid JSON ({exc}); expected a JSON object", key=where, expected="a JSON object"
                ) from None
        return rows
    name = "<stdin>" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc}", file=name, expected="a readable JSON file") from None
    stripped = text.strip()
    try:
        if stripped.startswith("["):
            parsed = json.loads(stripped)
            return parsed if isinstance(parsed, list) else [parsed]
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON ({exc}); expected a JSON list of objects or JSON lines",
            file=name,
            expected="a JSON list of objects or JSON lines",
        ) from None


def _put(args: argparse.Namespace) -> int:
    import time

    rows = _read_rows(args)
    now = time.time()
    for r in rows:
        if isinstance(r, dict):
            r.setdefault("event_timestamp", now)
    with _open(args.store) as store:
        n = store.write_to_online_store(args.view, rows)
    if args.json:
        from ._output import print_json

        print_json({"view": args.view, "rows": n})
    else:
        print(f"wrote {n} rows to {args.view}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from edge_runtime._time import from_epoch_us

    with _open(args.store) as store:
        rows = store.stats()
    from ._output import print_json, print_table

    for r in rows:
        for k in ("oldest_event_us", "newest_event_us"):
            if r[k] is not None:
                r[k.replace("_us", "")] = from_epoch_us(r[k]).isoformat()
            else:
                r[k.replace("_us", "")] = None
    if args.json:
        print_json(rows)
    else:
        print_table(
            rows, ["kind", "name", "rows", "expired", "oldest_event", "newest_event", "ttl_seconds", "max_rows"]
        )
    return 0
