"""Issue 13: every identifier, key and value is checked at the boundary with a typed error."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from _fs_helpers import T0, row

from edge_runtime import Aggregation, Entity, FeatureStore, FeatureView, Field, StreamFeatureView
from edge_runtime._errors import DefinitionError, RowValidationError


def _count(store) -> int:
    return len(store.get_online_features(["profile:age"], {"user_id": list(range(10))}).to_dict()["age"])


# --- 1. names that differ only in case -------------------------------------------------------------------


def test_views_differing_only_in_case_are_refused(tmp_path, clock, user):
    lower = FeatureView(name="scores", entities=[user], schema=[Field(name="x", dtype="int64")], ttl=60)
    upper = FeatureView(
        name="SCORES", entities=[user], schema=[Field(name="x", dtype="int64"), Field(name="y", dtype="int64")]
    )
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        with pytest.raises(DefinitionError, match=r"'SCORES'.*'scores'|'scores'.*'SCORES'"):
            s.apply([lower, upper])
        s.apply([lower])
        with pytest.raises(DefinitionError, match=r"'SCORES'.*'scores'.*differ only in letter case"):
            s.apply([upper])
        assert [d.name for d in s.definitions() if isinstance(d, FeatureView)] == ["scores"]
    with sqlite3.connect(tmp_path / "f.db") as conn:  # the refused migration left the other view's table alone
        assert [r[1] for r in conn.execute("PRAGMA table_info(fv__scores)")] == [
            "user_id",
            "x",
            "event_ts",
            "written_us",
        ]


def test_streams_and_event_fields_differing_only_in_case_are_refused(tmp_path, clock, user):
    def sfv(name: str, source: str, field: str) -> StreamFeatureView:
        return StreamFeatureView(
            name=name,
            entities=[user],
            source=source,
            schema=[Field(name=field, dtype="float64")],
            aggregations=[Aggregation(column=field, function="sum", window=60, name=f"{name}_sum")],
        )

    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([sfv("a", "clicks", "amount")])
        with pytest.raises(DefinitionError, match=r"'Clicks'.*'clicks'"):
            s.apply([sfv("b", "Clicks", "amount")])
        with pytest.raises(DefinitionError, match=r"'AMOUNT'.*'amount'"):
            s.apply([sfv("b", "clicks", "AMOUNT")])


def test_fields_and_keys_differing_only_in_case_are_refused(user):
    with pytest.raises(DefinitionError, match=r"'AGE'.*'age'"):
        FeatureView(
            name="v", entities=[user], schema=[Field(name="age", dtype="int64"), Field(name="AGE", dtype="int64")]
        )
    with pytest.raises(DefinitionError, match=r"'USER_ID'.*'user_id'"):
        FeatureView(name="v", entities=[user], schema=[Field(name="USER_ID", dtype="int64")])
    with pytest.raises(DefinitionError, match=r"reserved"):
        FeatureView(name="v", entities=[user], schema=[Field(name="EVENT_TS", dtype="int64")])
    with pytest.raises(DefinitionError, match=r"reserved"):
        Entity(name="e", join_keys=["Written_US"])
    with pytest.raises(DefinitionError, match=r"'ID'.*'id'"):
        Entity(name="e", join_keys=["id", "ID"])


# --- 2. join keys out of the int64 range -----------------------------------------------------------------


def test_uint64_join_keys_above_int64_are_refused(store):
    rows = {"user_id": np.array([1, 2**64 - 1], dtype=np.uint64), "age": [1, 2], "event_timestamp": [T0, T0]}
    with pytest.raises(RowValidationError, match="out of the int64 range") as err:
        store.write_to_online_store("profile", rows)
    assert (err.value.row, err.value.column) == (1, "user_id")
    with pytest.raises(RowValidationError, match="out of the int64 range") as err:
        store.get_online_features(["profile:age"], {"user_id": np.array([1, 2**64 - 1], dtype=np.uint64)})
    assert (err.value.row, err.value.column) == (1, "user_id")
    with pytest.raises(RowValidationError, match="out of the int64 range") as err:
        store.get_online_features(["profile:age"], [{"user_id": 1}, {"user_id": 2**63}])
    assert (err.value.row, err.value.column) == (1, "user_id")
    with pytest.raises(RowValidationError, match="out of the int64 range"):
        store.write_to_online_store("profile", [row(1), row(2**63)])


# --- 3. non-finite values --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_inf_is_refused_like_nan(store, bad):
    with pytest.raises(RowValidationError, match=r"row 1, column 'score'.*inf is not allowed") as err:
        store.write_to_online_store("profile", [row(1), row(2, score=bad)])
    assert err.value.column == "score"
    with pytest.raises(RowValidationError, match=r"row 1, column 'ctr'.*inf is not allowed"):
        store.write_to_online_store(
            "profile", {"user_id": [1, 2], "ctr": np.array([0.5, bad]), "event_timestamp": [T0, T0]}
        )
    with pytest.raises(RowValidationError, match=r"row 1, column 'emb'.*inf is not allowed"):
        store.write_to_online_store("profile", [row(1), row(2, emb=[1.0, bad, 2.0])])
    with pytest.raises(RowValidationError, match=r"row 0, column 'emb'.*inf is not allowed"):
        store.write_to_online_store(
            "profile", {"user_id": [1], "emb": np.array([[1.0, bad, 2.0]]), "event_timestamp": [T0]}
        )


def test_inf_event_values_are_refused(tmp_path, clock, orders_view):
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([orders_view])
        with pytest.raises(RowValidationError, match=r"row 0, column 'amount'.*inf is not allowed"):
            s.push_events("order_events", [{"user_id": 1, "amount": float("inf"), "items": 1, "event_timestamp": T0}])


def test_inf_allowed_when_declared(tmp_path, user, clock):
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="x", dtype="float64", allow_nan=True)])
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        s.write_to_online_store("v", [{"user_id": 1, "x": float("inf"), "event_timestamp": T0}])
        assert s.get_online_features(["v:x"], {"user_id": [1]}).to_dict()["x"] == [float("inf")]


# --- 4. lone surrogates ----------------------------------------------------------------------------------


def test_lone_surrogates_are_refused(store):
    with pytest.raises(RowValidationError, match="surrogate") as err:
        store.write_to_online_store("profile", [row(1), row(2, city="a\ud800")])
    assert (err.value.row, err.value.column) == (1, "city")


def test_lone_surrogate_keys_are_refused(tmp_path, clock):
    dev = Entity(name="device", join_keys=["device_id"])
    fv = FeatureView(name="d", entities=[dev], schema=[Field(name="n", dtype="int64")])
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        with pytest.raises(RowValidationError, match="surrogate") as err:
            s.write_to_online_store(
                "d",
                [
                    {"device_id": "a", "n": 1, "event_timestamp": T0},
                    {"device_id": "\ud800", "n": 1, "event_timestamp": T0},
                ],
            )
        assert (err.value.row, err.value.column) == (1, "device_id")
        with pytest.raises(RowValidationError, match="surrogate") as err:
            s.get_online_features(["d:n"], [{"device_id": "a"}, {"device_id": "\udfff"}])
        assert (err.value.row, err.value.column) == (1, "device_id")
        with pytest.raises(RowValidationError, match="surrogate") as err:  # the single-entity hot path too
            s.get_online_features(["d:n"], {"device_id": "\udfff"})
        assert (err.value.row, err.value.column) == (0, "device_id")
        for read in (
            lambda: s.get_online_features(["d:n"], [{"device_id": "\udfff"}]),
            lambda: s.read_entity(["d:n"], {"device_id": "\udfff"}),
            lambda: s.read_entity(["d:n"], {"device_id": 2**63}),
        ):
            with pytest.raises(RowValidationError, match=r"surrogate|out of the int64 range") as err:
                read()
            assert (err.value.row, err.value.column) == (0, "device_id")
