"""apply(): adding features and views keeps data; incompatible changes are refused and change nothing."""

from __future__ import annotations

import sqlite3

import pytest
from _fs_helpers import T0, row

from edge_runtime import (
    DefinitionError,
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    SchemaConflictError,
)


def _tables(path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_file_is_wal_and_registry_survives_reopen(tmp_path, profile, clock):
    path = tmp_path / "f.db"
    with FeatureStore(path, clock=clock) as s:
        changes = s.apply([profile, FeatureService(name="svc", features=[profile])])
        assert "created table for feature view profile" in changes
        s.write_to_online_store("profile", [row(1)])
        assert s.apply([profile]) == []  # idempotent
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    with FeatureStore(path, clock=clock) as s:
        assert s.get_view("profile") == profile
        assert s.get_feature_service("svc").features[0] == "profile:age"
        assert s.get_online_features("svc", [{"user_id": 1}]).to_dict()["city"] == ["Lyon"]
    assert {"fv__profile", "_fs_registry"} <= _tables(path)


def test_adding_a_feature_keeps_rows(store, user, profile):
    store.write_to_online_store("profile", [row(1, age=7)])
    bigger = FeatureView(
        name="profile", entities=[user], schema=[*profile.schema, Field(name="level", dtype="int64")], ttl=3600
    )
    changes = store.apply([bigger])
    assert "added feature profile:level (int64)" in changes
    resp = store.get_online_features(["profile:age", "profile:level"], [{"user_id": 1}])
    assert resp.to_dict() == {"user_id": [1], "age": [7], "level": [None]}
    store.write_to_online_store("profile", [row(1, ts=T0, level=3)])
    assert store.get_online_features(["profile:level"], [{"user_id": 1}]).to_dict()["level"] == [3]


def test_adding_a_view_keeps_other_views(store, user):
    store.write_to_online_store("profile", [row(1)])
    store.apply([FeatureView(name="extra", entities=[user], schema=[Field(name="x", dtype="string")])])
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [30]


def test_type_change_is_refused_and_nothing_changes(store, user, profile, tmp_path):
    store.write_to_online_store("profile", [row(1, age=7)])
    changed = FeatureView(
        name="profile",
        entities=[user],
        schema=[Field(name="age", dtype="string") if f.name == "age" else f for f in profile.schema]
        + [Field(name="new_one", dtype="int64")],
        ttl=3600,
    )
    newcomer = FeatureView(name="newcomer", entities=[user], schema=[Field(name="x", dtype="int64")])
    with pytest.raises(SchemaConflictError, match="feature 'age' is int64; changing it to string") as err:
        store.apply([newcomer, changed])
    assert err.value.view == "profile"
    assert err.value.feature == "age"
    # One transaction: neither the new view nor the new column exist, in the file or in memory.
    assert "fv__newcomer" not in _tables(store.path)
    with pytest.raises(Exception, match="unknown feature"):
        store.get_online_features(["profile:new_one"], [{"user_id": 1}])
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [7]


def test_join_key_change_is_refused(store, profile):
    other_user = Entity(name="customer", join_keys=["customer_id"])
    rekeyed = FeatureView(name="profile", entities=[other_user], schema=profile.schema)
    with pytest.raises(SchemaConflictError, match="join keys"):
        store.apply([rekeyed])
    with pytest.raises(SchemaConflictError, match="entity 'user' has join keys"):
        store.apply([Entity(name="user", join_keys=["uid"])])


def test_view_kind_change_is_refused(store, user):
    from edge_runtime import Aggregation, StreamFeatureView

    sv = StreamFeatureView(
        name="profile",
        entities=[user],
        source="s",
        schema=[Field(name="a", dtype="int64")],
        aggregations=[Aggregation(column="a", function="sum", window=60)],
    )
    with pytest.raises(SchemaConflictError, match="already a feature view"):
        store.apply([sv])


def test_two_definitions_with_one_name_in_one_apply(store, user):
    a = FeatureView(name="dup", entities=[user], schema=[Field(name="a", dtype="int64")])
    b = FeatureView(name="dup", entities=[user], schema=[Field(name="b", dtype="int64")])
    with pytest.raises(DefinitionError, match="two different definitions"):
        store.apply([a, b])


def test_apply_rejects_non_definitions(store):
    with pytest.raises(DefinitionError, match="cannot apply str"):
        store.apply(["profile"])
