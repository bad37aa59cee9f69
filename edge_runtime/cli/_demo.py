"""`edge-runtime demo`: the on-device feature store on embedded definitions, offline, in a few seconds.

Interim: the serving-runtime demo will replace it. It builds a throw-away store in a temporary directory, applies
definitions, writes rows, reads them back with their statuses (one value past its TTL), serves a windowed stream
aggregate and an on-demand feature, and prints measured latencies.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` command to the top-level parser."""
    p = sub.add_parser(
        "demo",
        help="run the offline feature-store demo (no network, a few seconds)",
        description="Create a temporary feature store, write and read features, and print latencies.",
    )
    p.add_argument("--entities", type=int, default=10_000, help="users to write (default 10000)")
    p.add_argument("--keep", metavar="DIR", help="keep the store in DIR instead of a temporary directory")
    p.set_defaults(handler=_demo)


def _definitions() -> list[Any]:
    from edge_runtime.features import (
        Aggregation,
        Entity,
        FeatureService,
        FeatureView,
        Field,
        RequestSource,
        StreamFeatureView,
        on_demand_feature_view,
    )

    user = Entity(name="user", join_keys=["user_id"])
    profile = FeatureView(
        name="user_profile",
        entities=[user],
        schema=[
            Field(name="age", dtype="int64"),
            Field(name="avg_basket", dtype="float32"),
            Field(name="embedding", dtype="float32[4]"),
        ],
        ttl=24 * 3600,
    )
    orders = StreamFeatureView(
        name="user_orders",
        entities=[user],
        source="orders",
        schema=[Field(name="amount", dtype="float64")],
        aggregations=[
            Aggregation(column=None, function="count", window=600),
            Aggregation(column="amount", function="sum", window=3600),
        ],
    )
    checkout = RequestSource(name="checkout", schema=[Field(name="amount", dtype="float64")])

    @on_demand_feature_view(
        sources=[profile, checkout], schema=[Field(name="basket_ratio", dtype="float64")], name="basket_ratio"
    )
    def basket_ratio(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {
            "basket_ratio": [
                None if avg is None else amount / max(avg, 1e-6)
                for amount, avg in zip(inputs["amount"], inputs["avg_basket"], strict=False)
            ]
        }

    service = FeatureService(
        name="fraud_model",
        features=[
            "user_profile:age",
            "user_profile:avg_basket",
            "user_orders:events_count_10m",
            "user_orders:amount_sum_1h",
            "basket_ratio:basket_ratio",
        ],
    )
    return [user, profile, orders, checkout, basket_ratio, service]


def _p50_us(fn: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_runtime.features import FeatureStore

    from ._output import print_table

    with tempfile.TemporaryDirectory(prefix="edge-runtime-demo-") as tmp:
        directory = Path(args.keep) if args.keep else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "features.db"
        n = max(args.entities, 10)
        with FeatureStore(path) as store:
            print(f"feature store: {path}")
            for change in store.apply(_definitions()):
                print(f"  {change}")
            now = time.time()
            rng = np.random.default_rng(7)
            ids = np.arange(1, n + 1)
            rows = {
                "user_id": ids,
                "age": rng.integers(18, 90, n),
                "avg_basket": rng.uniform(5, 120, n).astype(np.float32),
                "embedding": rng.standard_normal((n, 4)).astype(np.float32),
                # user 2's row is two days old: past the view's one-day TTL.
                "event_timestamp": np.where(ids == 2, now - 2 * 86400, now - rng.uniform(0, 3600, n)),
            }
            t0 = time.perf_counter()
            store.write_to_online_store("user_profile", rows)
            write_s = time.perf_counter() - t0
            events = [
                {"user_id": 1, "amount": amount, "event_timestamp": now - ago}
                for amount, ago in ((12.5, 30), (40.0, 200), (7.25, 1800), (99.0, 7200))
            ]
            store.push_events("orders", events)

            entity_rows = [
                {"user_id": 1, "amount": 60.0},
                {"user_id": 2, "amount": 15.0},
                {"user_id": n + 1, "amount": 5.0},
            ]
            resp = store.get_online_features("fraud_model", entity_rows)
            values, statuses = resp.to_dict(), resp.statuses
            print("\nfeatures for three users (user 2 is past its TTL, the last one was never written):")
            table = []
            for i, row in enumerate(entity_rows):
                for name in resp.feature_names:
                    v = values[name][i]
                    table.append(
                        {
                            "user_id": row["user_id"],
                            "feature": name,
                            "value": round(v, 3) if isinstance(v, float) else v,
                            "status": statuses[name][i].name,
                        }
                    )
            print_table(table, ["user_id", "feature", "value", "status"])

            one = [{"user_id": 1}]
            hundred = {"user_id": list(range(1, 101))}
            svc, first = "fraud_model", entity_rows[:1]
            refs = ["user_profile:age", "user_profile:avg_basket", "user_profile:embedding"]
            store.get_online_features(refs, one).to_dict()
            print("\nlatency (median):")
            print_table(
                [
                    {
                        "operation": "get_online_features, 1 entity, 3 features",
                        "latency": f"{_p50_us(lambda: store.get_online_features(refs, one).to_dict(), 2000):.1f} µs",
                    },
                    {
                        "operation": "get_online_features, 100 entities, 3 features",
                        "latency": f"{_p50_us(lambda: store.get_online_features(refs, hundred).to_dict(), 200):.0f} µs",
                    },
                    {
                        "operation": "service: view + stream aggregates + on-demand, 1 entity",
                        "latency": f"{_p50_us(lambda: store.get_online_features(svc, first).to_dict(), 500):.1f} µs",
                    },
                    {
                        "operation": f"write_to_online_store, {n} rows in one transaction",
                        "latency": f"{write_s * 1e3:.1f} ms ({n / write_s:,.0f} rows/s)",
                    },
                ],
                ["operation", "latency"],
            )
            stats = {s["name"]: s for s in store.stats()}
            size = sum(p.stat().st_size for p in directory.glob("features.db*"))
            print(
                f"\nstore: {stats['user_profile']['rows']} rows in user_profile "
                f"({stats['user_profile']['expired']} past TTL), {stats['orders']['rows']} events in stream orders; "
                f"file {size / 1e6:.1f} MB"
            )
    return 0
