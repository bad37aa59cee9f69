"""`edge-runtime predict`, `status`, `bench` and `serve`: the serving runtime on this device, from the shell."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

MODES = ("online", "cached", "precomputed", "tensors")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the runtime commands to the top-level parser."""
    p = sub.add_parser(
        "predict",
        help="predict with a model on this device and show outputs, version, feature statuses and latency",
        description="Run one prediction through the serving runtime. Each --entity is one entity row "
        "(comma-separated key=value pairs: its join keys and request data).",
    )
    _runtime_args(p)
    p.add_argument("model", help="model name (as installed in the model store)")
    _entity_args(p)
    p.add_argument("--mode", choices=MODES, help="serving mode (default: the profile's, then the manifest's)")
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a tensor for mode 'tensors', e.g. 'features=[[0,0,0,0,0,0,0,0]]' (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(handler=_predict)

    p = sub.add_parser(
        "status",
        help="show the profile, models, feature views, sync and telemetry of a device's runtime",
        description="What runs on this device: active and previous model versions, serving modes, cached "
        "predictions, feature view sizes (and expired rows), sync and telemetry settings.",
    )
    _runtime_args(p)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=_status)

    p = sub.add_parser(
        "bench",
        help="measure predict latency (p50/p99) and throughput on this device in every serving mode",
        description="Time rt.predict for the given entity rows in each serving mode (after one warm-up call). "
        "Modes the model cannot serve here are reported with the reason.",
    )
    _runtime_args(p)
    p.add_argument("model", help="model name")
    _entity_args(p)
    p.add_argument("-n", "--iterations", type=int, default=1000, help="timed calls per mode (default 1000)")
    p.add_argument(
        "--rows", type=int, default=None, help="entity rows per call: the given rows repeated (default: as given)"
    )
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated modes (default {','.join(MODES)})")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")
    p.set_defaults(handler=_bench)

    p = sub.add_parser(
        "serve",
        help="serve the local HTTP API (predict, features, health, metrics) on localhost or a Unix socket",
        description="Run the local API for device apps not written in Python (see docs/local-api.md). Binds to "
        "127.0.0.1 unless --unix-socket or --allow-remote is given. Needs the 'serve' extra (waitress).",
    )
    _runtime_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="TCP port (default 8787; 0 picks a free one)")
    p.add_argument("--unix-socket", metavar="PATH", help="listen on this Unix socket (mode 0600) instead of TCP")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --host (the API has no authentication)"
    )
    p.add_argument("--threads", type=int, default=4, help="request worker threads (default 4)")
    p.add_argument("--connection-limit", type=int, default=512, help="open connections served at once (default 512)")
    p.add_argument(
        "--idle-timeout",
        type=int,
        default=10,
        metavar="SECONDS",
        help="close a connection that sends no complete request for this long (default 10)",
    )
    p.add_argument("--no-sync", action="store_true", help="do not start the profile's sync agent")
    p.set_defaults(handler=_serve)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PROFILE.toml", help="device profile (see device_configs/)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data directory (overrides the profile's; without --config: default settings, ./edge-data)",
    )


def _entity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--entity",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="one entity row, e.g. user_id=1 (repeat for a batch)",
    )
    p.add_argument(
        "--request", action="append", default=[], metavar="K=V", help="request data for every row (repeatable)"
    )


# --- argument parsing ------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value: an integer, a float, true/false, or else the string itself."""
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?", text):
        return float(text)
    if text in ("true", "false"):
        return text == "true"
    return text


def parse_pairs(text: str, option: str) -> dict[str, Any]:
    """``k=v,k2=v2`` as a dict; a clear error naming the option when malformed."""
    from edge_runtime._errors import ConfigError

    out: dict[str, Any] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected key=value, got {part!r}", key=option, expected="key=value[,key=value]")
        out[key.strip()] = parse_value(value.strip())
    return out


def _entities(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows = [parse_pairs(e, "--entity") for e in args.entity]
    request: dict[str, Any] = {}
    for r in args.request:
        request.update(parse_pairs(r, "--request"))
    return rows, (request or None)


def _inputs(items: list[str]) -> dict[str, Any] | None:
    from edge_runtime._errors import ConfigError

    if not items:
        return None
    out = {}
    for item in items:
        name, sep, raw = item.partition("=")
        try:
            if not sep:
                raise ValueError("missing '='")
            out[name] = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(
                f"cannot parse {item!r}: {exc}", key="--input", expected="NAME=JSON nested list"
            ) from None
    return out


def open_runtime(args: argparse.Namespace, *, start_sync: bool = False) -> Any:
    """The runtime for ``--config`` or ``--data-dir`` (the sync agent only when asked for)."""
    from pathlib import Path

    from edge_runtime import EdgeRuntime, RuntimeConfig

    if args.config:
        return EdgeRuntime.from_config(args.config, data_dir=args.data_dir, start_sync=start_sync)
    return EdgeRuntime(RuntimeConfig(data_dir=Path(args.data_dir or "edge-data")), start_sync=start_sync)


# --- predict ---------------------------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
    from edge_runtime._errors import ConfigError

    from ._output import print_json, print_table

    rows, request = _entities(args)
    inputs = _inputs(args.input)
    if not rows and inputs is None:
        raise ConfigError(
            "nothing to predict for", key="--entity", expected="--entity user_id=1 (or --input for mode tensors)"
        )
    with open_runtime(args) as rt:
        if inputs is not None:
            inputs = _typed_inputs(rt, args.model, inputs)
        pred = rt.predict(args.model, entity_rows=rows or None, request_data=request, inputs=inputs, mode=args.mode)
        if args.json:
            print_json(_json_safe(pred.to_dict()))
            return 0
        print(
            f"model {pred.model} v{pred.version}, mode {pred.mode}, {len(pred)} row(s), {pred.latency_s * 1000:.3f} ms"
        )
        labels = [_row_label(r) for r in rows] if rows else [f"row {i}" for i in range(len(pred))]
        table = []
        for i in range(len(pred)):
            row: dict[str, Any] = {"entity": labels[i] if i < len(labels) else f"row {i}"}
            for name, arr in pred.outputs.items():
                row[name] = _fmt_output(arr[i])
            row["cached"] = "yes" if pred.cached[i] else "no"
            table.append(row)
        print_table(table, ["entity", *pred.outputs, "cached"])
        status = pred.feature_status
        if status:
            print()
            cols = ["feature", *(labels[: len(pred)] or [f"row {i}" for i in range(len(pred))])]
            print_table([[ref, *(s.value for s in st)] for ref, st in status.items()], cols)
    return 0


def _typed_inputs(rt: Any, model: str, inputs: dict[str, Any]) -> dict[str, Any]:
    from edge_runtime._errors import ConfigError
    from edge_runtime.server._app import ApiError, coerce_inputs

    try:
        return coerce_inputs(rt, model, inputs)
    except ApiError as exc:
        raise ConfigError(exc.message, key="--input", expected="NAME=JSON nested list of numbers") from None


def _row_label(row: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in row.items())


def _fmt_output(value: Any) -> str:
    import numpy as np

    arr = np.asarray(value).reshape(-1)
    if arr.size == 1:
        return f"{float(arr[0]):.6g}"
    return "[" + ", ".join(f"{float(v):.4g}" for v in arr[:8]) + (", ...]" if arr.size > 8 else "]")


def _json_safe(value: Any) -> Any:
    """NaN (a missing precomputed prediction) as null: strict JSON has no NaN."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


# --- status ----------------------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from ._output import print_json, print_table

    with open_runtime(args) as rt:
        st = rt.status()
        cfg = rt.config
        sync = (
            {"broker": cfg.sync.broker_url, "device_id": cfg.sync.device_id, "agent": "not running in this process"}
            if cfg.sync is not None
            else None
        )
        if st.get("sync") is None:
            st["sync"] = sync
        if args.json:
            print_json(st)
            return 0
        print(f"profile: {st['profile']}")
        print(f"data dir: {st['data_dir']}")
        print("\nmodels:")
        if st["models"]:
            print_table(st["models"], ["name", "active", "previous", "mode", "cached_predictions"])
        else:
            print("  (none installed: edge-runtime models install BUNDLE --store DIR/models)")
        print("\nfeature views and streams:")
        if st["features"]:
            print_table(st["features"], ["name", "kind", "entities", "rows", "expired", "ttl_seconds", "max_rows"])
        else:
            print("  (no definitions applied)")
        s = st["sync"]
        print(
            "\nsync: "
            + (
                "off (no [sync] section, or enabled = false)"
                if s is None
                else ", ".join(f"{k}={v}" for k, v in s.items())
            )
        )
        t = st["telemetry"]
        print(
            "telemetry: "
            + (f"on, {t['pending_reports']} report(s) waiting in the outbox" if t["enabled"] else "off (opt-in)")
        )
    return 0


# --- bench -----------------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> int:
    from edge_runtime._errors import ConfigError, EdgeRuntimeError

    from ._output import print_json, print_table

    rows, request = _entities(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise ConfigError(f"unknown mode {m!r}", key="--modes", expected=" | ".join(MODES), got=m)
    if args.iterations < 1:
        raise ConfigError("must be at least 1", key="--iterations", expected=">= 1", got=args.iterations)
    if not rows and any(m != "tensors" for m in modes):
        raise ConfigError("bench needs entity rows", key="--entity", expected="--entity user_id=1")
    if args.rows is not None:
        if args.rows < 1:
            raise ConfigError("must be at least 1", key="--rows", expected=">= 1", got=args.rows)
        rows = [rows[i % len(rows)] for i in range(args.rows)] if rows else rows
    n_rows = len(rows) if rows else (args.rows or 1)
    results = []
    with open_runtime(args) as rt:
        for mode in modes:
            try:
                results.append(bench_mode(rt, args.model, mode, rows, request, n_rows, args.iterations))
            except EdgeRuntimeError as exc:
                results.append({"mode": mode, "error": str(exc)})
    if args.json:
        print_json({"model": args.model, "rows_per_call": n_rows, "iterations": args.iterations, "modes": results})
        return 0
    print(f"model {args.model}: {args.iterations} calls per mode, {n_rows} row(s) per call")
    table = [
        {
            "mode": r["mode"],
            "p50": f"{r['p50_ms']:.3f} ms" if "p50_ms" in r else "n/a",
            "p99": f"{r['p99_ms']:.3f} ms" if "p99_ms" in r else "n/a",
            "calls/s": f"{r['calls_per_s']:,.0f}" if "calls_per_s" in r else "",
            "rows/s": f"{r['rows_per_s']:,.0f}" if "rows_per_s" in r else "",
            "note": r.get("error") or r.get("note", ""),
        }
        for r in results
    ]
    print_table(table, ["mode", "p50", "p99", "calls/s", "rows/s", "note"])
    return 0


def bench_mode(
    rt: Any,
    model: str,
    mode: str,
    rows: list[dict[str, Any]],
    request: dict[str, Any] | None,
    n_rows: int,
    iterations: int,
) -> dict[str, Any]:
    """Time ``iterations`` predict calls in ``mode`` after one warm-up call; latency percentiles and rates."""
    import time

    import numpy as np

    if mode == "tensors":
        manifest = rt.models.active(model).manifest
        inputs = {
            spec.name: np.zeros(tuple(n_rows if d is None else d for d in spec.shape), dtype=spec.dtype)
            for spec in manifest.inputs
        }

        def call() -> Any:
            return rt.predict(model, inputs=inputs, mode="tensors")

    else:

        def call() -> Any:
            return rt.predict(model, entity_rows=rows, request_data=request, mode=mode)

    first = call()  # warm-up: compiles the plan; in cached mode fills the cache
    samples = np.empty(iterations)
    perf = time.perf_counter
    t_start = perf()
    for i in range(iterations):
        t0 = perf()
        call()
        samples[i] = perf() - t0
    total = perf() - t_start
    note = ""
    if mode == "cached":
        note = "hits (warm-up filled the cache)"
    elif mode == "precomputed" and not all(first.cached):
        note = "some rows had no stored prediction (model fallback)"
    return {
        "mode": mode,
        "p50_ms": float(np.percentile(samples, 50) * 1000),
        "p99_ms": float(np.percentile(samples, 99) * 1000),
        "calls_per_s": iterations / total,
        "rows_per_s": iterations * n_rows / total,
        "note": note,
    }


# --- serve -----------------------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import signal

    from edge_runtime.server import LocalServer

    with open_runtime(args, start_sync=not args.no_sync) as rt:
        server = LocalServer(
            rt,
            host=args.host,
            port=args.port,
            unix_socket=args.unix_socket,
            allow_remote=args.allow_remote,
            threads=args.threads,
            connection_limit=args.connection_limit,
            idle_timeout_s=args.idle_timeout,
        )

        def _terminate(signum: int, frame: Any) -> None:
            raise SystemExit(0)  # waitress closes its sockets on SystemExit; then the runtime closes

        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            models = ", ".join(f"{n} v{rt.models.active_version(n)}" for n in rt.models.names()) or "none"
            print(f"edge-runtime: serving the local API on {server.url} (models: {models})", flush=True)
            print("edge-runtime: Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
            server.run()
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
            signal.signal(signal.SIGTERM, previous)
    return 0
