"""Properties (hypothesis): what you write is what you read; the newest event wins in any order; TZ never matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from _fs_helpers import T0, Clock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import Aggregation, Entity, FeatureStore, FeatureView, Field, StreamFeatureView

USER = Entity(name="user", join_keys=["user_id"])
VIEW = FeatureView(
    name="v",
    entities=[USER],
    schema=[
        Field(name="i", dtype="int64"),
        Field(name="f32", dtype="float32", allow_nan=True),  # allow_nan admits the inf values drawn below
        Field(name="f64", dtype="float64", allow_nan=True),
        Field(name="b", dtype="bool"),
        Field(name="s", dtype="string"),
        Field(name="raw", dtype="bytes"),
        Field(name="vec", dtype="float32[4]"),
    ],
)
REFS = [f"v:{f.name}" for f in VIEW.schema]

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
values = st.fixed_dictionaries(
    {
        "i": st.integers(-(2**63), 2**63 - 1),
        "f32": st.one_of(finite32, st.just(float("inf")), st.just(float("-inf"))),
        "f64": st.floats(allow_nan=False),
        "b": st.booleans(),
        "s": st.text(),
        "raw": st.binary(),
        "vec": st.lists(finite32, min_size=4, max_size=4),
    }
)
keys = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20))


def _memory_store() -> FeatureStore:
    s = FeatureStore(":memory:", clock=Clock())
    s.apply([VIEW])
    return s


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.dictionaries(keys, values, min_size=1, max_size=8))
def test_write_then_read_roundtrip(rows):
    with _memory_store() as s:
        s.write_to_online_store("v", [{"user_id": k, **v, "event_timestamp": T0} for k, v in rows.items()])
        got = s.get_online_features(REFS, [{"user_id": k} for k in rows]).to_dict()
        for idx, (k, v) in enumerate(rows.items()):
            assert got["user_id"][idx] == k
            assert got["i"][idx] == v["i"]
            assert got["f32"][idx] == float(np.float32(v["f32"]))
            assert got["f64"][idx] == v["f64"]
            assert got["b"][idx] is v["b"]
            assert got["s"][idx] == v["s"]
            assert got["raw"][idx] == v["raw"]
            assert got["vec"][idx].tolist() == np.asarray(v["vec"], dtype=np.float32).tolist()


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 10**6)), min_size=1, max_size=30, unique_by=lambda w: w[1]
    ),
    batch_size=st.integers(1, 5),
    order=st.randoms(use_true_random=False),
)
def test_newest_event_wins_in_any_order(writes, batch_size, order):
    # Each write is (entity, distinct time); its value is its time, so the newest time must be what is read.
    shuffled = list(writes)
    order.shuffle(shuffled)
    with _memory_store() as s:
        for start in range(0, len(shuffled), batch_size):
            s.write_to_online_store(
                "v",
                [
                    {"user_id": k, "i": t, "event_timestamp": T0 + t / 1_000_000}
                    for k, t in shuffled[start : start + batch_size]
                ],
            )
        newest: dict[int, int] = {}
        for k, t in writes:
            newest[k] = max(newest.get(k, -1), t)
        got = s.get_online_features(["v:i"], {"user_id": list(newest)}).to_dict()["i"]
        assert got == list(newest.values())


_TZ_SCRIPT = textwrap.dedent(
    """
    import datetime as dt, json, sys, time
    sys.path.insert(0, sys.argv[2])
    from edge_runtime import Entity, FeatureStore, FeatureView, Field
    time.tzset()
    user = Entity(name="user", join_keys=["user_id"])
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="x", dtype="int64")], ttl=3600)
    now = 1_700_000_000.0
    s = FeatureStore(sys.argv[1], clock=lambda: now)
    s.apply([fv])
    aware = dt.datetime(2023, 11, 14, 16, 13, 19, 500, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    s.write_to_online_store("v", [
        {"user_id": 1, "x": 1, "event_timestamp": aware},
        {"user_id": 2, "x": 2, "event_timestamp": now - 3599.5},
        {"user_id": 3, "x": 3, "event_timestamp": now - 3600.5},
    ])
    r = s.get_online_features(["v:x"], {"user_id": [1, 2, 3]})
    print(json.dumps({"x": r.to_dict()["x"], "status": [st.name for st in r.statuses["x"]],
                      "oldest": s.stats()[0]["oldest_event_us"],
                      "newest": s.stats()[0]["newest_event_us"], "local": time.strftime("%z")}))
    """
)


def test_answers_do_not_depend_on_tz(tmp_path):
    results = []
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    for i, tz in enumerate(["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Etc/GMT+12"]):
        env = {**os.environ, "TZ": tz}
        out = subprocess.run(
            [sys.executable, "-c", _TZ_SCRIPT, str(tmp_path / f"f{i}.db"), root],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        results.append(json.loads(out.stdout))
    assert len({r["local"] for r in results}) > 1  # the zones really differed
    for r in results:
        r.pop("local")
    assert all(r == results[0] for r in results)
    assert results[0] == {
        "x": [None, 2, None],
        "status": ["OUTSIDE_MAX_AGE", "PRESENT", "OUTSIDE_MAX_AGE"],
        "oldest": 1_699_996_399_000_500,  # 21:13:19.000500 UTC: the -05:00 offset applied, microseconds kept
        "newest": 1_699_996_400_500_000,
    }


# --- stream aggregates against a reference model ---------------------------------------------------------------


STREAM_VIEW = StreamFeatureView(
    name="sv",
    entities=[USER],
    source="ev",
    schema=[Field(name="amount", dtype="float64"), Field(name="n", dtype="int64")],
    aggregations=[
        Aggregation(column=None, function="count", window=60),
        Aggregation(column="amount", function="sum", window=60),
        Aggregation(column="amount", function="mean", window=300),
        Aggregation(column="n", function="min", window=300),
        Aggregation(column="n", function="max", window=300),
        Aggregation(column="n", function="sum", window=300),
    ],
)


@settings(max_examples=50, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 2), st.integers(-30, 400), st.integers(-1000, 1000), st.integers(-50, 50)),
        max_size=40,
    )
)
def test_stream_aggregates_match_a_reference(events):
    with FeatureStore(":memory:", clock=Clock()) as s:
        s.apply([STREAM_VIEW])
        if events:
            s.push_events(
                "ev",
                [{"user_id": k, "amount": a / 8, "n": n, "event_timestamp": T0 - ago} for k, ago, a, n in events],
            )
        refs = [f"sv:{a.name}" for a in STREAM_VIEW.aggregations]
        got = s.get_online_features(refs, {"user_id": [0, 1, 2, 3]}).to_dict()
    for idx, k in enumerate([0, 1, 2, 3]):
        last60 = [(a / 8, n) for kk, ago, a, n in events if kk == k and 0 <= ago < 60]
        last300 = [(a / 8, n) for kk, ago, a, n in events if kk == k and 0 <= ago < 300]
        assert got["events_count_1m"][idx] == len(last60)
        assert got["amount_sum_1m"][idx] == sum(a for a, _ in last60)  # eighths: exact in binary floating point
        if last300:
            assert got["amount_mean_5m"][idx] == np.float64(sum(a for a, _ in last300) / len(last300))
            assert got["n_min_5m"][idx] == min(n for _, n in last300)
            assert got["n_max_5m"][idx] == max(n for _, n in last300)
        else:
            assert got["amount_mean_5m"][idx] is None
            assert got["n_min_5m"][idx] is None
        assert got["n_sum_5m"][idx] == sum(n for _, n in last300)
