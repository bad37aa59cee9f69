"""`edge-runtime demo` (what `make demo` runs): every serving mode of the runtime, offline, in a few seconds.

In a temporary data directory it installs the bundled int8 click-through model (ONNX, ~8 KB: no tensorflow, no
network), seeds the feature cache with synthetic users, order events and precomputed scores, then prints each
serving mode's answer and latency, a feature write invalidating a cached prediction, and per-feature statuses for
users whose features are missing or expired.

The model bundle and feature definitions are packaged in ``edge_runtime/_demo_assets`` (12 KB; a test keeps them
byte-identical to ``models/``), so the demo also runs from a wheel, not only from a checkout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent.parent / "_demo_assets"
MODEL = "ctr"
PRECOMPUTED_REF = "user_scores:ctr_prediction"
STREAM_REF = "user_stream:orders_last_10m"
#: users 1-3 are the demo's named examples: 1 is complete, 2's features are past their TTL, 3 was never synced
FRESH, EXPIRED, UNKNOWN = 1, 2, 3


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` command to the top-level parser."""
    p = sub.add_parser(
        "demo",
        help="run every serving mode on the bundled int8 model, offline, in a few seconds",
        description="Install the bundled int8 click-through model in a temporary data directory, seed the "
        "feature cache with synthetic users, and print each serving mode's answer and latency.",
    )
    p.add_argument("--users", type=int, default=5000, help="synthetic users to seed (default 5000)")
    p.add_argument("--keep", metavar="DIR", help="use (and keep) DIR as the data directory instead of a temp dir")
    p.add_argument(
        "--bundle",
        metavar="DIR",
        help="another bundle of the ctr model, e.g. models/ctr-tflite-int8 (default: the packaged ONNX int8 one)",
    )
    p.set_defaults(handler=_demo)


def _p50_ms(fn: Any, runs: int = 200) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def _seed(rt: Any, n: int, now: float) -> dict[str, Any]:
    """Synthetic users drawn like the model's training data (models/README.md), order events and cloud scores."""
    import numpy as np

    rng = np.random.default_rng(20261121)
    ids = np.array([i for i in range(1, n + 2) if i != UNKNOWN])  # user 3 was never synced
    m = len(ids)
    premium = rng.random(m) < 0.2
    t0 = time.perf_counter()
    rt.features.write_to_online_store(
        "user_data",
        {
            "user_id": ids,
            "click_through_rate": rng.beta(2, 30, m).astype(np.float32),
            "number_of_clicks": rng.poisson(rng.lognormal(2.5, 0.8, m)),
            "average_page_duration": rng.lognormal(np.log(45), 0.6, m).astype(np.float32),
            "days_since_signup": rng.integers(0, 1500, m),
            "sessions_last_7d": rng.poisson(rng.lognormal(1.2, 0.7, m)),
            "is_premium": premium,
            "avg_order_value": rng.lognormal(np.log(35), 0.5, m).astype(np.float32),
            # user 2 was last synced three days ago; user_data's TTL is two days
            "event_timestamp": np.where(ids == EXPIRED, now - 3 * 86400, now - rng.uniform(60, 6 * 3600, m)),
        },
    )
    write_s = time.perf_counter() - t0
    # Orders placed on this device in the last ten minutes (user 1 has none yet: the streaming row adds some).
    counts = rng.poisson(0.3 + 0.5 * premium)
    counts[ids == FRESH] = 0
    users = np.repeat(ids, counts)
    k = len(users)
    rt.features.push_events(
        "orders",
        {
            "user_id": users,
            "amount": rng.lognormal(np.log(35), 0.5, k),
            "event_timestamp": now - rng.uniform(0, 590, k),
        },
    )
    # Scores for the first thousand users, as the cloud's batch job would sync them.
    scored = ids[: min(1000, m)]
    cloud = rt.predict(MODEL, {"user_id": scored.tolist()}, mode="online").output.reshape(-1)
    rt.features.write_to_online_store(
        "user_scores", {"user_id": scored, "ctr_prediction": cloud, "event_timestamp": np.full(len(scored), now - 600)}
    )
    return {"users": m, "events": k, "scores": len(scored), "write_s": write_s}


def _value(pred: Any) -> str:
    v = float(pred.output.reshape(-1)[0])
    return "NaN" if v != v else f"{v:.4f}"


def _demo(args: argparse.Namespace) -> int:
    from edge_runtime import EdgeRuntime, ModelSettings, RuntimeConfig

    from ._output import print_table

    started = time.perf_counter()
    n = max(args.users, 10)
    with tempfile.TemporaryDirectory(prefix="edge-runtime-demo-") as tmp:
        data_dir = Path(args.keep) if args.keep else Path(tmp)
        config = RuntimeConfig(
            profile="demo",
            data_dir=data_dir,
            definitions=ASSETS / "definitions.toml",
            models=(ModelSettings(name=MODEL, prediction_feature=PRECOMPUTED_REF),),
        )
        with EdgeRuntime(config) as rt:
            bundle = Path(args.bundle) if args.bundle else ASSETS / "ctr-onnx-int8"
            version = rt.models.install(bundle, activate=True)
            if version.name != MODEL:
                from edge_runtime import ConfigError

                raise ConfigError(
                    f"the demo serves the click-through model; {bundle} holds {version.name!r}",
                    key="--bundle",
                    expected="a bundle of model 'ctr' (models/ctr-*)",
                    got=str(bundle),
                )
            active = rt.models.active(MODEL)
            manifest = active.manifest
            backend = getattr(active.backend, "name", type(active.backend).__name__)
            print(
                f"data dir {data_dir} (temporary unless --keep)\n"
                f"model {MODEL} v{version.version}: {manifest.format}, quantization {manifest.quantization.scheme}, "
                f"{version.size / 1024:.1f} KB, backend {backend}"
            )
            now = time.time()
            seeded = _seed(rt, n, now)
            print(
                f"seeded {seeded['users']:,} users in user_data ({seeded['write_s'] * 1000:.0f} ms, one transaction), "
                f"{seeded['events']:,} order events in the last 10 minutes, {seeded['scores']:,} precomputed scores\n"
            )
            rows = _modes(rt)
            print("serving modes (latency: this call; p50: median of 200 calls, for cached (miss) 200 other users):")
            print_table(rows, ["mode", "request", "answer", "cached", "latency", "p50 / rate"])
            _invalidation(rt)
            _statuses(rt)
        print(f"\ndemo finished in {time.perf_counter() - started:.1f} s, offline")
    return 0


def _ms(pred: Any) -> str:
    return f"{pred.latency_s * 1000:.3f} ms"


def _modes(rt: Any) -> list[dict[str, Any]]:
    import numpy as np

    user = [{"user_id": FRESH}]
    out: list[dict[str, Any]] = []

    def row(mode: str, request: str, pred: Any, p50: float | None, answer: str | None = None) -> None:
        out.append(
            {
                "mode": mode,
                "request": request,
                "answer": answer or _value(pred),
                "cached": "yes" if all(pred.cached) and len(pred) else "no",
                "latency": _ms(pred),
                "p50 / rate": f"{p50:.3f} ms" if p50 is not None else "",
            }
        )

    pred = rt.predict(MODEL, user, mode="online")
    row("online", "user 1: features from the cache", pred, _p50_ms(lambda: rt.predict(MODEL, user, mode="online")))

    def orders() -> int:
        resp = rt.features.get_online_features([STREAM_REF], user)
        return int(resp.to_dict()["orders_last_10m"][0] or 0)

    before_orders = orders()
    before = rt.predict(MODEL, user, mode="online")
    now = rt.now_us() / 1e6
    rt.features.push_events(
        "orders", [{"user_id": FRESH, "amount": 20.0 + i, "event_timestamp": now} for i in range(3)]
    )
    after = rt.predict(MODEL, user, mode="online")
    row(
        "streaming",
        f"user 1 orders_last_10m {before_orders} -> {orders()} (3 events pushed)",
        after,
        None,
        answer=f"{_value(before)} -> {_value(after)}",
    )

    pred = rt.predict(MODEL, user, mode="precomputed")
    row(
        "precomputed",
        "user 1: score synced from the cloud",
        pred,
        _p50_ms(lambda: rt.predict(MODEL, user, mode="precomputed")),
    )

    other = [{"user_id": 7}]
    miss = rt.predict(MODEL, other, mode="cached")
    miss_users = [[{"user_id": u}] for u in range(100, 300)]
    it = iter(miss_users)
    row(
        "cached (miss)",
        "user 7: runs the model, stores",
        miss,
        _p50_ms(lambda: rt.predict(MODEL, next(it), mode="cached")),
    )
    hit = rt.predict(MODEL, other, mode="cached")
    row("cached (hit)", "user 7 again: no model run", hit, _p50_ms(lambda: rt.predict(MODEL, other, mode="cached")))

    # The caller passes the standardised input itself: zeros are the training population's average user.
    x = {"features": np.zeros((1, 8), dtype=np.float32)}
    pred = rt.predict(MODEL, inputs=x)
    row("tensors", "caller's tensor: an average user", pred, _p50_ms(lambda: rt.predict(MODEL, inputs=x)))

    result = rt.batch_predict(MODEL)
    out.append(
        {
            "mode": "batch",
            "request": f"every user in {result.source_view} -> view {result.output_view}",
            "answer": f"{result.rows:,} rows scored",
            "cached": "",
            "latency": f"{result.seconds * 1000:.1f} ms",
            "p50 / rate": f"{result.rows / max(result.seconds, 1e-9):,.0f} rows/s",
        }
    )
    return out


def _invalidation(rt: Any) -> None:
    from ._output import print_table

    user = [{"user_id": 42}]
    rt.predict(MODEL, user, mode="cached")
    hit = rt.predict(MODEL, user, mode="cached")
    now = rt.now_us() / 1e6
    # The user's features change (the cloud syncs a new row): the cached prediction no longer holds.
    rt.features.write_to_online_store(
        "user_data",
        [
            {
                "user_id": 42,
                "click_through_rate": 0.2,
                "number_of_clicks": 80,
                "average_page_duration": 90.0,
                "days_since_signup": 30,
                "sessions_last_7d": 12,
                "is_premium": True,
                "avg_order_value": 60.0,
                "event_timestamp": now,
            }
        ],
    )
    after = rt.predict(MODEL, user, mode="cached")
    again = rt.predict(MODEL, user, mode="cached")
    print("\ncached prediction invalidated by a feature write (user 42):")
    print_table(
        [
            {
                "step": "1. predict",
                "answer": _value(hit),
                "cached": "hit" if hit.cached[0] else "miss",
                "latency": _ms(hit),
            },
            {"step": "2. write user_data for user 42", "answer": "", "cached": "", "latency": ""},
            {
                "step": "3. predict",
                "answer": _value(after),
                "cached": "hit" if after.cached[0] else "miss",
                "latency": _ms(after),
            },
            {
                "step": "4. predict",
                "answer": _value(again),
                "cached": "hit" if again.cached[0] else "miss",
                "latency": _ms(again),
            },
        ],
        ["step", "answer", "cached", "latency"],
    )
    outcome = (
        "invalidated" if hit.cached[0] and not after.cached[0] and _value(hit) != _value(after) else "NOT invalidated"
    )
    print(f"write {outcome}: {_value(hit)} -> {_value(after)}")


def _statuses(rt: Any) -> None:
    from ._output import print_table

    users = [{"user_id": FRESH}, {"user_id": EXPIRED}, {"user_id": UNKNOWN}]
    pred = rt.predict(MODEL, users, mode="online")
    pre = rt.predict(MODEL, users, mode="precomputed")
    labels = ["user 1 (fresh)", "user 2 (3 days old)", "user 3 (never synced)"]
    table = [[ref, *(s.value for s in st)] for ref, st in pred.feature_status.items()]
    table.append(["answer (online)", *(f"{float(v):.4f}" for v in pred.output.reshape(-1))])
    for ref, st in pre.feature_status.items():
        table.append([f"{ref} (precomputed)", *(s.value for s in st)])
    table.append(
        [
            "answer (precomputed)",
            *(
                f"{float(v):.4f}{'' if c else ' (model fallback)'}"
                for v, c in zip(pre.output.reshape(-1), pre.cached, strict=True)
            ),
        ]
    )
    print("\nper-feature statuses (expired and missing values are replaced by the manifest's defaults):")
    print_table(table, ["feature", *labels])
