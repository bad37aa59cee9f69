"""``cloud-sync publish``, ``release``, ``cloud`` and ``fleet status|releases``: the publisher's commands.

Registered by :func:`register` from ``cloud_sync.cli``; handlers import the library only when they run, so
``cloud-sync --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_sync._errors import PublisherError

if TYPE_CHECKING:
    from ._config import CloudConfig


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the publisher's commands to the ``cloud-sync`` subparsers."""
    _register_publish(sub)
    _register_release(sub)
    _register_cloud(sub)
    _register_fleet(sub)


def _connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument(
        "--config", type=Path, help="cloud config TOML ([broker], [store], [release]; see docs/publisher.md)"
    )
    g.add_argument(
        "--credentials", type=Path, help="JSON credentials file written by cloud-sync broker (instead of --config)"
    )
    g.add_argument("--db", type=Path, help="publisher database (default: from the config, else ./cloud-sync.db)")
    g.add_argument("--client-id", help="MQTT client id (the worker's persistent session; default cloud-sync-worker)")


def _config(args: argparse.Namespace) -> CloudConfig:
    from ._config import CloudConfig, load_cloud_config

    overrides: dict[str, Any] = {}
    if args.db is not None:
        overrides["db_path"] = args.db
    if getattr(args, "client_id", None):
        overrides["client_id"] = args.client_id
    if args.config is not None:
        return load_cloud_config(args.config, **overrides)
    if args.credentials is not None:
        return CloudConfig.from_credentials(args.credentials, **overrides)
    raise PublisherError("say how to reach the broker: --config cloud.toml or --credentials credentials.json")


# --- publish ------------------------------------------------------------------------------------------------


def _register_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish a feature snapshot or delta from Parquet, CSV or JSON lines to devices or the whole fleet",
        description=(
            "Publish rows of a feature view. Each row goes to one device (--route-column names the column holding "
            "the device id, --route-map a JSON file {entity: device}) or every row to the whole fleet "
            "(--broadcast). The publish is recorded in the delta log before it is sent, so devices that miss it "
            "catch up later through a running cloud-sync cloud worker."
        ),
    )
    p.add_argument("view", help="feature view (stream) name")
    p.add_argument("source", type=Path, help="rows: .parquet/.pq, .csv, or .jsonl/.ndjson (one JSON object per line)")
    p.add_argument(
        "--join-key", action="append", required=True, metavar="COLUMN", help="entity key column (repeat for several)"
    )
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--route-column", metavar="COLUMN", help="column holding each row's device id")
    route.add_argument(
        "--route-map", type=Path, metavar="JSON", help='JSON file {"entity": "device"} (composite keys: "a,b")'
    )
    route.add_argument("--broadcast", action="store_true", help="send every row to the whole fleet")
    p.add_argument("--snapshot", action="store_true", help="a full snapshot (new epoch) instead of a delta")
    p.add_argument("--tombstones", type=Path, metavar="FILE", help="rows to delete (join keys, route, event time)")
    p.add_argument("--timestamp-column", default="event_timestamp", help="event-time column (default event_timestamp)")
    p.add_argument("--dtype", action="append", default=[], metavar="COLUMN=DTYPE", help="force a column's dtype")
    p.add_argument("--skip-unrouted", action="store_true", help="drop rows the route has no device for")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _connection_args(p)
    p.set_defaults(handler=_publish)


def _route_from_map(path: Path) -> Any:
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PublisherError(f"{path}: cannot read the route map ({exc})") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise PublisherError(f'{path}: the route map must be a JSON object {{"entity": "device-id"}}')

    def route(entity: dict[str, Any]) -> str | None:
        device: str | None = mapping.get(",".join(str(v) for v in entity.values()))
        return device

    return route


def _publish(args: argparse.Namespace) -> int:
    from ._publisher import CloudPublisher

    dtypes = {}
    for item in args.dtype:
        name, sep, dtype = item.partition("=")
        if not sep or not name or not dtype:
            raise PublisherError(f"--dtype takes COLUMN=DTYPE, got {item!r}")
        dtypes[name] = dtype
    route: Any = None
    if args.route_column:
        route = args.route_column
    elif args.route_map:
        route = _route_from_map(args.route_map)
    with CloudPublisher(_config(args), serve=False) as cloud:
        result = cloud.publish_features(
            args.view,
            args.source,
            join_keys=args.join_key,
            kind="snapshot" if args.snapshot else "delta",
            route=route,
            broadcast=args.broadcast,
            tombstones=args.tombstones,
            dtypes=dtypes,
            timestamp_column=args.timestamp_column or None,
            skip_unrouted=args.skip_unrouted,
        )
    rows = [
        {
            "target": "(fleet)" if t.target == "*" else t.target,
            "kind": t.kind,
            "epoch": t.epoch,
            "seq": f"{t.seq_first}..{t.seq_last}",
            "rows": t.rows,
            "deletes": t.tombstones,
            "messages": t.messages,
        }
        for t in result.targets
    ]
    if args.json:
        from edge_runtime.cli._output import print_json

        print_json({"view": result.view, "kind": result.kind, "unrouted": result.unrouted, "targets": rows})
    else:
        from edge_runtime.cli._output import print_table

        print_table(rows, ["target", "kind", "epoch", "seq", "rows", "deletes", "messages"])
        print(f"{result.rows} rows in {result.messages} messages to {len(rows)} targets; {result.unrouted} unrouted")
    return 0


# --- release ------------------------------------------------------------------------------------------------


def _register_release(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "release",
        help="release a model bundle (signed) to every device, a list, or a self-halting canary",
        description=(
            "Copy the bundle into the release directory, sign it there when it is unsigned (or when --expires-in "
            "changes its manifest), and publish its retained manifest on the channel <name>.<variant>. Chunks are "
            "served by a running cloud-sync cloud worker. A release halts itself (its manifest is withdrawn from "
            "devices that have not started) when more than --failure-threshold of its devices report a failed "
            "install."
        ),
    )
    p.add_argument(
        "bundle",
        type=Path,
        nargs="+",
        help="bundle directory or .tar.gz; several = the variants of one version (each on its own channel)",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument("--canary", type=float, metavar="PERCENT", help="offer it to this percentage of the fleet")
    target.add_argument("--all", action="store_true", help="offer it to every device (the default)")
    p.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="ID",
        help="offer it to this device only (repeat); with --canary: count it as part of the fleet",
    )
    p.add_argument("--signing-key", type=Path, help="Ed25519 private key (PEM) to sign the bundle with")
    p.add_argument("--expires-in", type=float, metavar="SECONDS", help="add metadata.expires_at to the manifest")
    p.add_argument("--failure-threshold", type=float, help="halt when more than this fraction fails (default 0.2)")
    p.add_argument("--chunk-size", type=int, help="bytes per chunk (default 65536)")
    p.add_argument("--halt", metavar="REASON", help="instead: halt the release of this bundle's channel and version")
    p.add_argument("--json", action="store_true", help="print the result as JSON (a list, one item per bundle)")
    _connection_args(p)
    p.set_defaults(handler=_release)


def _release(args: argparse.Namespace) -> int:
    from ._publisher import CloudPublisher

    if args.all and args.device:
        raise PublisherError("--all and --device exclude each other (--device alone releases to those devices)")
    infos = []
    with CloudPublisher(_config(args), serve=False) as cloud:
        for path in args.bundle:
            offered: tuple[str, ...] = ()
            if args.halt is not None:
                from edge_runtime.models import open_bundle

                from ._releases import channel_of

                with open_bundle(path) as bundle:
                    channel, _ = channel_of(bundle.manifest.name, dict(bundle.manifest.metadata or {}))
                    version = bundle.manifest.version
                release = cloud.halt(channel, version, args.halt)
            else:
                result = cloud.release(
                    path,
                    devices=args.device,
                    canary_percent=args.canary,
                    signing_key=args.signing_key,
                    expires_in=args.expires_in,
                    failure_threshold=args.failure_threshold,
                    chunk_size=args.chunk_size,
                )
                release, offered = result.release, result.offered
            info = _release_row(release)
            info["offered"] = list(offered)
            infos.append(info)
    if args.json:
        from edge_runtime.cli._output import print_json

        print_json(infos)
        return 0
    for i, info in enumerate(infos):
        if i:
            print()
        for key, value in info.items():
            print(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
    return 0


def _release_row(release: Any) -> dict[str, Any]:
    return {
        "id": release.id,
        "channel": release.channel,
        "model": release.model,
        "version": release.version,
        "scope": release.scope + (f" {release.percent:g}%" if release.percent is not None else ""),
        "state": release.state,
        "chunks": release.chunk_count,
        "size": release.size,
        "halt_reason": release.halt_reason,
        "bundle": str(release.bundle_dir),
    }


# --- cloud worker -------------------------------------------------------------------------------------------


def _register_cloud(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cloud",
        help="run the cloud worker: answer catch-ups and chunk requests, keep the fleet ledger, store telemetry",
        description=(
            "Connect with a persistent MQTT 5 session, subscribe to every device's up/ topics and serve until "
            "Ctrl-C or SIGTERM: hello and features.catchup are answered from the delta log (replay or fresh "
            "snapshot), chunk requests with chunks of offered releases, install reports update the ledger and may "
            "halt a canary, telemetry is stored (deduplicated) and acknowledged. Reconnects with capped, jittered "
            "backoff."
        ),
    )
    _connection_args(p)
    p.add_argument("--stats-every", type=float, default=0, metavar="SECONDS", help="print counters periodically")
    p.add_argument("-v", "--verbose", action="store_true", help="log every catch-up, halt and rejected message")
    p.set_defaults(handler=_cloud)


def _cloud(args: argparse.Namespace) -> int:
    import logging

    from cloud_sync.cli import _sigterm_as_interrupt

    from ._publisher import CloudPublisher

    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = _config(args)
    with _sigterm_as_interrupt():
        try:
            with CloudPublisher(config, serve=True) as cloud:
                print(f"cloud worker connected to {config.broker_url} as {config.username}; db {config.db_path}")
                sys.stdout.flush()
                last = time.monotonic()
                while True:
                    time.sleep(0.2)
                    if args.stats_every and time.monotonic() - last >= args.stats_every:
                        last = time.monotonic()
                        print(json.dumps(cloud.stats(), sort_keys=True))
                        sys.stdout.flush()
        except KeyboardInterrupt:
            return 0


# --- fleet --------------------------------------------------------------------------------------------------


def _register_fleet(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("fleet", help="show the fleet ledger: desired vs reported state per device, releases")
    fleet = p.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)
    s = fleet.add_parser(
        "status",
        help="desired vs reported model versions and stream watermarks, last status and last seen per device",
        description="Read the fleet ledger from the publisher database (no broker connection needed).",
    )
    _db_args(s)
    s.set_defaults(handler=_fleet_status)
    r = fleet.add_parser(
        "releases",
        help="every model release with its scope, state and halt reason",
        description="List the releases recorded in the publisher database, newest first.",
    )
    _db_args(r)
    r.set_defaults(handler=_fleet_releases)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="cloud config TOML (its [store] db is read)")
    p.add_argument("--db", type=Path, help="publisher database (default ./cloud-sync.db)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _db_path(args: argparse.Namespace) -> Path:
    if args.db is not None:
        return Path(args.db)
    if args.config is not None:
        from ._config import load_cloud_config

        return Path(load_cloud_config(args.config).db_path)
    return Path("cloud-sync.db")


def _fleet_status(args: argparse.Namespace) -> int:
    from edge_runtime._time import from_epoch_us

    from ._publisher import fleet_status

    states = fleet_status(_db_path(args))
    if args.json:
        from edge_runtime.cli._output import print_json

        print_json([s.to_json() for s in states])
        return 0
    from edge_runtime.cli._output import print_table

    def fmt_models(models: Any) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(models.items())) or "-"

    rows = [
        {
            "device": s.device,
            "state": s.state or "?",
            "last_seen": from_epoch_us(s.last_seen_us).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "models": fmt_models(s.models_reported),
            "desired": fmt_models(s.models_desired),
            "streams": f"{sum(1 for k, v in s.streams_desired.items() if s.streams_reported.get(k) == v)}"
            f"/{len(s.streams_desired)}",
            "in_sync": "yes" if s.in_sync else "no: " + " ".join(s.behind),
            "last": s.detail or s.last_event or "-",
        }
        for s in states
    ]
    print_table(rows, ["device", "state", "last_seen", "models", "desired", "streams", "in_sync", "last"])
    if not rows:
        print("(no device has been seen yet)")
    return 0


def _fleet_releases(args: argparse.Namespace) -> int:
    from ._publisher import list_releases

    rows = [_release_row(r) for r in list_releases(_db_path(args))]
    if args.json:
        from edge_runtime.cli._output import print_json

        print_json(rows)
        return 0
    from edge_runtime.cli._output import print_table

    print_table(rows, ["id", "channel", "version", "scope", "state", "chunks", "halt_reason"])
    return 0
