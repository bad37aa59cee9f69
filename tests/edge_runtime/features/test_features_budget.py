"""Budget and privacy: max_rows eviction, the TTL sweep, delete_entity, write listeners, entity listing."""

from __future__ import annotations

import pytest
from _fs_helpers import T0, row

from edge_runtime import (
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    RowValidationError,
    UnknownNameError,
)


def _ids(store: FeatureStore, view: str) -> list[int]:
    return [e["user_id"] for e in store.list_entities(view)]


def test_max_rows_evicts_least_recently_written(tmp_path, user, clock):
    fv = FeatureView(name="small", entities=[user], schema=[Field(name="x", dtype="int64")], max_rows=3)
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        for i in range(3):
            s.write_to_online_store("small", [{"user_id": i, "x": i, "event_timestamp": T0}])
        # Rewriting 0 makes it the most recent; adding 3 then evicts 1, the least recently written.
        s.write_to_online_store("small", [{"user_id": 0, "x": 10, "event_timestamp": T0 + 1}])
        s.write_to_online_store("small", [{"user_id": 3, "x": 3, "event_timestamp": T0}])
        assert _ids(s, "small") == [0, 2, 3]
        # A batch bigger than the budget keeps the budget.
        s.write_to_online_store("small", [{"user_id": i, "x": i, "event_timestamp": T0} for i in range(10, 15)])
        assert len(s.list_entities("small")) == 3
        assert s.stats()[0]["rows"] == 3


def test_sweep_expired_deletes_only_expired_rows(store, clock):
    store.write_to_online_store("profile", [row(1, ts=T0 - 10), row(2, ts=T0 - 5000)])
    assert store.stats()[0]["expired"] == 1
    assert store.sweep_expired() == {"profile": 1}
    assert _ids(store, "profile") == [1]
    clock.advance(3600)
    assert store.sweep_expired() == {"profile": 1}
    assert store.list_entities("profile") == []


def test_delete_entity_removes_every_trace(store, user, orders_view):
    pair = FeatureView(
        name="pair",
        entities=[user, Entity(name="shop", join_keys=["shop_id"])],
        schema=[Field(name="n", dtype="int64")],
    )
    store.apply([orders_view, pair])
    store.write_to_online_store("profile", [row(1), row(2)])
    store.write_to_online_store(
        "pair",
        [{"user_id": 1, "shop_id": s, "n": 1, "event_timestamp": T0} for s in ("a", "b")]
        + [{"user_id": 2, "shop_id": "a", "n": 1, "event_timestamp": T0}],
    )
    store.push_events("order_events", [{"user_id": u, "amount": 1.0, "event_timestamp": T0} for u in (1, 1, 2)])
    counts = store.delete_entity({"user_id": 1})
    assert counts == {"profile": 1, "pair": 2, "stream:order_events": 2}
    assert _ids(store, "profile") == [2]
    assert store.list_entities("pair") == [{"user_id": 2, "shop_id": "a"}]
    assert store.get_online_features(["orders:events_count_10m"], [{"user_id": 1}]).to_dict()["events_count_10m"] == [0]
    assert store.get_online_features(["orders:events_count_10m"], [{"user_id": 2}]).to_dict()["events_count_10m"] == [1]
    assert store.list_entities("orders") == [{"user_id": 2}]


def test_delete_entity_errors(store):
    with pytest.raises(UnknownNameError, match=r"unknown entity with join keys 'uid'; available: user\(user_id\)"):
        store.delete_entity({"uid": 1})
    with pytest.raises(UnknownNameError, match="unknown entity 'nobody'"):
        store.delete_entity({"user_id": 1}, entity="nobody")
    with pytest.raises(RowValidationError, match="join key must be an int or a string"):
        store.delete_entity({"user_id": 1.5})


def test_write_listeners_see_committed_changes(store, orders_view):
    store.apply([orders_view])
    calls = []

    def listener(view, keys):
        # Called after the commit: the new values are readable from here.
        value = store.get_online_features(["profile:age"], [{"user_id": keys[0][0]}]).to_dict()["age"][0]
        calls.append((view, keys, value if view == "profile" else None))

    store.add_write_listener(listener)
    store.add_write_listener(lambda view, keys: 1 / 0)  # a broken listener neither fails nor undoes the write
    store.write_to_online_store("profile", [row(1, age=5), row(2), row(1, age=5)])
    store.push_events("order_events", [{"user_id": 3, "amount": 1.0, "event_timestamp": T0}])
    store.delete_entity({"user_id": 2})
    assert calls == [
        ("profile", [(1,), (2,)], 5),
        ("orders", [(3,)], None),
        ("profile", [(2,)], None),
        ("orders", [(2,)], None),  # deletions invalidate every view of the entity
    ]
    store.remove_write_listener(listener)
    store.write_to_online_store("profile", [row(9)])
    assert len(calls) == 4


def test_iter_entities_in_batches(store):
    store.write_to_online_store("profile", [row(i) for i in range(25)])
    batches = list(store.iter_entities("profile", batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    # Batches are ready to be used as entity rows.
    assert store.get_online_features(["profile:age"], batches[2]).to_dict()["age"] == [30] * 5
    with pytest.raises(UnknownNameError, match="unknown feature view 'nope'"):
        store.list_entities("nope")


def test_stats_report_views_and_streams(store, orders_view):
    store.apply([orders_view])
    store.write_to_online_store("profile", [row(1, ts=T0 - 1), row(2, ts=T0 - 2)])
    store.push_events("order_events", [{"user_id": 1, "amount": 1.0, "event_timestamp": T0}])
    stats = {s["name"]: s for s in store.stats()}
    assert stats["profile"]["rows"] == 2
    assert stats["profile"]["newest_event_us"] == int((T0 - 1) * 1e6)
    assert stats["order_events"]["kind"] == "stream"
    assert stats["order_events"]["rows"] == 1


def test_state_commits_with_rows_or_not_at_all(store):
    assert store.get_state("sync:profile") is None
    store.write_to_online_store("profile", [row(1)], state={"sync:profile": {"epoch": 1, "seq": 10}})
    assert store.get_state("sync:profile") == {"epoch": 1, "seq": 10}
    bad = [row(2), row(3, age="x")]
    with pytest.raises(RowValidationError):
        store.write_to_online_store("profile", bad, state={"sync:profile": {"epoch": 1, "seq": 11}})
    assert store.get_state("sync:profile") == {"epoch": 1, "seq": 10}
    assert store.write_to_online_store("profile", [], state={"sync:profile": {"epoch": 2, "seq": 0}}) == 0
    assert store.get_state("sync:profile", default={})["epoch"] == 2
    from edge_runtime import FeatureStoreError

    with pytest.raises(FeatureStoreError, match="not JSON-serialisable"):
        store.write_to_online_store("profile", [row(4)], state={"k": object()})
    assert _ids(store, "profile") == [1]


def test_delete_from_one_view(store, user):
    other = FeatureView(name="other", entities=[user], schema=[Field(name="x", dtype="int64")])
    store.apply([other])
    store.write_to_online_store("profile", [row(1), row(2), row(3)])
    store.write_to_online_store("other", [{"user_id": 1, "x": 1, "event_timestamp": T0}])
    seen = []
    store.add_write_listener(lambda view, keys: seen.append((view, keys)))
    assert store.delete_from_online_store("profile", {"user_id": [1, 3, 99]}, state={"seq": 5}) == 2
    assert _ids(store, "profile") == [2]
    assert _ids(store, "other") == [1]
    assert store.get_state("seq") == 5
    assert seen == [("profile", [(1,), (3,), (99,)])]
    with pytest.raises(RowValidationError, match="join key 'user_id' is missing"):
        store.delete_from_online_store("profile", [{"uid": 1}])
    with pytest.raises(UnknownNameError):
        store.delete_from_online_store("nope", [{"user_id": 1}])


def test_eviction_is_reported_to_listeners(tmp_path, user, clock):
    fv = FeatureView(name="small", entities=[user], schema=[Field(name="x", dtype="int64")], max_rows=2)
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        seen = []
        s.add_write_listener(lambda view, keys: seen.append(keys))
        s.write_to_online_store("small", [{"user_id": i, "x": i, "event_timestamp": T0} for i in (1, 2)])
        s.write_to_online_store("small", [{"user_id": 3, "x": 3, "event_timestamp": T0}])
        assert seen[-1] == [(3,), (1,)]  # written, then evicted


def test_the_profiles_max_rows_per_view_is_enforced(tmp_path, clock):
    """cache.max_rows_per_view was parsed from the profile and never applied: a 50,000-row budget stored 100,000."""
    from pathlib import Path

    from edge_runtime import CacheSettings, EdgeRuntime, RuntimeConfig

    root = Path(__file__).resolve().parents[3]
    config = RuntimeConfig(
        data_dir=tmp_path / "d",
        definitions=root / "models" / "definitions.toml",
        cache=CacheSettings(max_rows_per_view=50),
    )
    with EdgeRuntime(config, clock=clock) as rt:
        rows = [{"user_id": i, "click_through_rate": 0.1, "event_timestamp": T0 - 200 + i} for i in range(120)]
        rt.features.write_to_online_store("user_data", rows[:80])
        rt.features.write_to_online_store("user_data", rows[80:])
        assert len(rt.features.list_entities("user_data")) == 50
        ids = _ids(rt.features, "user_data")
        assert 119 in ids and 0 not in ids, "the least recently written rows went first"


def test_a_views_own_smaller_max_rows_still_wins(tmp_path, user, clock):
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="x", dtype="float32")], max_rows=10)
    with FeatureStore(tmp_path / "f.db", clock=clock, max_rows_per_view=100) as s:
        s.apply([fv])
        s.write_to_online_store("v", [{"user_id": i, "x": 1.0, "event_timestamp": T0} for i in range(30)])
        assert len(s.list_entities("v")) == 10
