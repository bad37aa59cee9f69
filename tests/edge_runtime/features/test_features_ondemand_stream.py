"""On-demand views (request data + looked-up features) and stream aggregates over windows, as of the clock."""

from __future__ import annotations

import pytest
from _fs_helpers import T0, row

from edge_runtime import (
    Aggregation,
    Entity,
    FeatureStore,
    FeatureStoreError,
    Field,
    FieldStatus,
    OnDemandFeatureView,
    RequestSource,
    RowValidationError,
    StreamFeatureView,
    UnknownNameError,
    on_demand_feature_view,
)

# Importable at module level so the registry can find it again after a reopen.
REQUEST = RequestSource(name="checkout", schema=[Field(name="amount", dtype="float64")])


def ratio_udf(inputs):
    return {"ratio": [None if s is None else a / s for a, s in zip(inputs["amount"], inputs["score"], strict=True)]}


def _ratio_view(profile) -> OnDemandFeatureView:
    return OnDemandFeatureView(
        name="ratio", sources=[profile, REQUEST], schema=[Field(name="ratio", dtype="float64")], udf=ratio_udf
    )


def test_on_demand_view_uses_request_data_and_features(store, profile):
    store.apply([_ratio_view(profile)])
    store.write_to_online_store("profile", [row(1, score=0.5)])
    rows = [{"user_id": 1, "amount": 3.0}, {"user_id": 2, "amount": 1.0}]
    resp = store.get_online_features(["ratio:ratio", "profile:score"], rows)
    assert resp.to_dict() == {"user_id": [1, 2], "amount": [3.0, 1.0], "ratio": [6.0, None], "score": [0.5, None]}
    assert resp.statuses["ratio"] == [FieldStatus.PRESENT, FieldStatus.NOT_FOUND]


def test_on_demand_udf_found_again_after_reopen(tmp_path, profile, clock):
    path = tmp_path / "f.db"
    with FeatureStore(path, clock=clock) as s:
        s.apply([_ratio_view(profile)])
        s.write_to_online_store("profile", [row(1, score=0.25)])
    with FeatureStore(path, clock=clock) as s:
        got = s.get_online_features(["ratio:ratio"], [{"user_id": 1, "amount": 1.0}]).to_dict()
        assert got["ratio"] == [4.0]


def test_on_demand_lambda_needs_reapply_after_reopen(tmp_path, profile, clock):
    path = tmp_path / "f.db"
    odfv = OnDemandFeatureView(
        name="lam", sources=[profile], schema=[Field(name="x", dtype="int64")], udf=lambda i: {"x": i["age"]}
    )
    with FeatureStore(path, clock=clock) as s:
        s.apply([odfv])
        s.write_to_online_store("profile", [row(1)])
        assert s.get_online_features(["lam:x"], [{"user_id": 1}]).to_dict()["x"] == [30]
    with FeatureStore(path, clock=clock) as s:
        with pytest.raises(FeatureStoreError, match="apply the view again"):
            s.get_online_features(["lam:x"], [{"user_id": 1}])
        s.apply([odfv])
        assert s.get_online_features(["lam:x"], [{"user_id": 1}]).to_dict()["x"] == [30]


def test_on_demand_errors(store, profile):
    store.apply([_ratio_view(profile)])
    with pytest.raises(RowValidationError, match="request data 'amount' for on-demand feature view 'ratio'"):
        store.get_online_features(["ratio:ratio"], [{"user_id": 1}])
    with pytest.raises(RowValidationError, match=r"row 1, column 'amount'.*expected a float64"):
        store.get_online_features(["ratio:ratio"], [{"user_id": 1, "amount": 1.0}, {"user_id": 2, "amount": "x"}])

    def make(udf, dtype="float64"):
        return OnDemandFeatureView(name="bad", sources=[profile], schema=[Field(name="y", dtype=dtype)], udf=udf)

    cases = [
        (lambda i: 1 / 0, "failed: ZeroDivisionError"),
        (lambda i: [1], "returned list; expected a dict"),
        (lambda i: {"y": [1.0], "z": [2]}, "undeclared columns"),
        (lambda i: {}, "did not return column 'y'"),
        (lambda i: {"y": [1.0, 2.0]}, "has 2 values for 1 entity rows"),
        (lambda i: {"y": ["text"]}, "column 'y', row 0: expected a float64"),
    ]
    for udf, needle in cases:
        store.apply([make(udf)])
        with pytest.raises(FeatureStoreError, match=needle):
            store.get_online_features(["bad:y"], [{"user_id": 1}])


def test_on_demand_decorator_with_vector_output(store, profile):
    @on_demand_feature_view(sources=[profile], schema=[Field(name="twice", dtype="float32[3]")])
    def doubled(inputs):
        return {"twice": [None if e is None else e * 2 for e in inputs["emb"]]}

    store.apply([doubled])
    store.write_to_online_store("profile", [row(1)])
    got = store.get_online_features(["doubled:twice"], {"user_id": [1, 2]}).to_dict()["twice"]
    assert got[0].tolist() == [2.0, 4.0, 6.0]
    assert got[1] is None


# --- streams ------------------------------------------------------------------------------------------------


def _push(store, user_id, ago, amount, items=1):
    store.push_events(
        "order_events", [{"user_id": user_id, "amount": amount, "items": items, "event_timestamp": T0 - ago}]
    )


def test_stream_aggregates_over_windows(store, orders_view, clock):
    store.apply([orders_view])
    for ago, amount, items in ((30, 10.0, 1), (300, 5.0, 4), (1200, 100.0, 2), (5000, 1000.0, 9)):
        _push(store, 1, ago, amount, items)
    _push(store, 1, -60, 7.0)  # in the future: not counted yet
    refs = [f"orders:{a.name}" for a in orders_view.aggregations]
    resp = store.get_online_features(refs, {"user_id": [1, 2]})
    d = resp.to_dict()
    assert d["events_count_10m"] == [2, 0]
    assert d["amount_sum_10m"] == [15.0, 0.0]
    assert d["amount_mean_1h"] == [pytest.approx(115 / 3), None]
    assert d["items_max_1h"] == [4, None]
    assert d["items_min_1h"] == [1, None]
    assert d["amount_sum_1h"] == [115.0, 0.0]
    assert resp.statuses["amount_mean_1h"] == [FieldStatus.PRESENT, FieldStatus.NOT_FOUND]
    assert resp.statuses["events_count_10m"] == [FieldStatus.PRESENT, FieldStatus.PRESENT]
    clock.advance(120)  # the future event is now 60 s old
    d = store.get_online_features(["orders:events_count_10m", "orders:amount_sum_10m"], [{"user_id": 1}]).to_dict()
    assert d["events_count_10m"] == [3]
    assert d["amount_sum_10m"] == [22.0]
    clock.advance(3600)
    assert store.get_online_features(["orders:amount_sum_1h"], [{"user_id": 1}]).to_dict()["amount_sum_1h"] == [0.0]


def test_stream_mixed_with_batch_features_in_one_read(store, orders_view):
    store.apply([orders_view])
    store.write_to_online_store("profile", [row(1)])
    _push(store, 1, 10, 2.5)
    d = store.get_online_features(["profile:age", "orders:amount_sum_10m"], [{"user_id": 1}]).to_dict()
    assert d == {"user_id": [1], "age": [30], "amount_sum_10m": [2.5]}


def test_old_events_are_pruned(store, orders_view, clock):
    store.apply([orders_view])
    _push(store, 1, 10, 1.0)
    _push(store, 1, 4000, 1.0)  # older than the longest window (1 h): pruned on the next prune
    assert store.prune_events() == {"order_events": 1}
    clock.advance(7200)
    _push(store, 1, -7200 + 5, 1.0)  # a push long after the last prune prunes by itself
    assert store.stats()[-1]["rows"] == 1


def test_push_validation(store, orders_view):
    store.apply([orders_view])
    with pytest.raises(UnknownNameError, match="unknown stream 'nope'; available: order_events"):
        store.push_events("nope", [])
    with pytest.raises(RowValidationError, match=r"stream 'order_events', row 0, column 'price': unknown event field"):
        store.push_events("order_events", [{"user_id": 1, "price": 1.0, "event_timestamp": T0}])
    with pytest.raises(RowValidationError, match="expected a float64"):
        store.push_events("order_events", [{"user_id": 1, "amount": "1", "event_timestamp": T0}])
    assert store.push_events("order_events", {"user_id": [1], "event_timestamp": [T0]}) == 1


def test_two_views_over_one_stream_must_agree(store, orders_view, user):
    store.apply([orders_view])
    from edge_runtime import SchemaConflictError

    clash = StreamFeatureView(
        name="orders2",
        entities=[user],
        source="order_events",
        schema=[Field(name="amount", dtype="int64")],
        aggregations=[Aggregation(column="amount", function="sum", window=60)],
    )
    with pytest.raises(SchemaConflictError, match="event field 'amount' of stream 'order_events' is float64"):
        store.apply([clash])
    other = Entity(name="shop", join_keys=["shop_id"])
    rekeyed = StreamFeatureView(
        name="orders3",
        entities=[other],
        source="order_events",
        schema=[Field(name="amount", dtype="float64")],
        aggregations=[Aggregation(column="amount", function="sum", window=60)],
    )
    with pytest.raises(SchemaConflictError, match="keyed by"):
        store.apply([rekeyed])
    extra = StreamFeatureView(
        name="orders4",
        entities=[orders_view.entities[0]],
        source="order_events",
        schema=[Field(name="amount", dtype="float64"), Field(name="tip", dtype="float64")],
        aggregations=[Aggregation(column="tip", function="sum", window=86400)],
    )
    assert "added event field order_events.tip (float64)" in store.apply([extra])
    store.push_events("order_events", [{"user_id": 1, "tip": 2.0, "event_timestamp": T0 - 40000}])
    assert store.get_online_features(["orders4:tip_sum_1d"], [{"user_id": 1}]).to_dict()["tip_sum_1d"] == [2.0]


def test_stream_read_with_out_of_range_key(store, orders_view):
    store.apply([orders_view])
    with pytest.raises(RowValidationError, match="int64 range"):
        store.get_online_features(["orders:events_count_10m"], [{"user_id": 2**64}])
