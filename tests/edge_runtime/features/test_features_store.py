"""Writing and reading: shapes, statuses, TTL, newest-event-wins, batch atomicity and every bad input."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from _fs_helpers import T0, row

from edge_runtime import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureStoreError,
    FeatureView,
    Field,
    FieldStatus,
    RowValidationError,
    StoreClosedError,
    UnknownNameError,
)

ALL = ["profile:age", "profile:score", "profile:ctr", "profile:vip", "profile:city", "profile:blob", "profile:emb"]


def _count(store: FeatureStore) -> int:
    return store.stats()[0]["rows"]


def test_roundtrip_every_dtype_and_feast_shape(store):
    store.write_to_online_store("profile", [row(1, age=41, score=0.1, ctr=0.3, vip=True, emb=np.array([1, 2, 3.5]))])
    resp = store.get_online_features(ALL, [{"user_id": 1}, {"user_id": 2}])
    d = resp.to_dict()
    assert list(d) == ["user_id", "age", "score", "ctr", "vip", "city", "blob", "emb"]
    assert d["user_id"] == [1, 2]
    assert d["age"] == [41, None]
    assert d["score"] == [0.1, None]
    assert d["ctr"] == [float(np.float32(0.3)), None]
    assert d["vip"] == [True, None]
    assert type(d["vip"][0]) is bool
    assert d["city"] == ["Lyon", None]
    assert d["blob"] == [b"\x00\x01", None]
    np.testing.assert_array_equal(d["emb"][0], np.array([1, 2, 3.5], dtype=np.float32))
    assert d["emb"][1] is None
    assert resp.statuses["age"] == [FieldStatus.PRESENT, FieldStatus.NOT_FOUND]
    assert resp.feature_names == ["age", "score", "ctr", "vip", "city", "blob", "emb"]
    assert len(resp) == 2


def test_numpy_and_dataframe_views(store):
    store.write_to_online_store("profile", [row(1, age=5), row(2, age=6, score=None)])
    resp = store.get_online_features(ALL, {"user_id": [1, 2, 3]})
    arrays = resp.to_numpy()
    assert arrays["age"].dtype == np.float64
    assert math.isnan(arrays["age"][2])
    assert arrays["score"][0] == 0.5
    assert math.isnan(arrays["score"][1])
    assert arrays["ctr"].dtype == np.float32
    assert arrays["emb"].shape == (3, 3)
    assert np.isnan(arrays["emb"][2]).all()
    assert arrays["city"].dtype == object
    full = store.get_online_features(["profile:age"], {"user_id": [1, 2]}).to_numpy("age")
    assert full.dtype == np.int64
    assert full.tolist() == [5, 6]
    df = resp.to_df()
    assert list(df.columns) == ["user_id", *resp.feature_names]
    assert len(df) == 3
    with pytest.raises(UnknownNameError, match="available: age"):
        store.get_online_features(["profile:age"], [{"user_id": 1}]).to_numpy("nope")


def test_full_feature_names_and_services(store, profile):
    store.write_to_online_store("profile", [row(1)])
    d = store.get_online_features(["profile:age"], [{"user_id": 1}], full_feature_names=True).to_dict()
    assert d == {"user_id": [1], "profile__age": [30]}
    svc = FeatureService(name="model_a", features=["profile:city", "profile:age"])
    store.apply([svc])
    assert store.get_online_features(svc, [{"user_id": 1}]).to_dict() == {"user_id": [1], "city": ["Lyon"], "age": [30]}
    assert store.get_online_features("model_a", [{"user_id": 1}]).feature_names == ["city", "age"]
    with pytest.raises(UnknownNameError, match="unknown feature service 'nope'; available: model_a"):
        store.get_online_features("nope", [{"user_id": 1}])


def test_entity_rows_shapes(store):
    store.write_to_online_store("profile", [row(i, age=i) for i in range(5)])
    by_rows = store.get_online_features(["profile:age"], [{"user_id": i} for i in (4, 0, 4, 9)]).to_dict()
    by_cols = store.get_online_features(["profile:age"], {"user_id": np.array([4, 0, 4, 9])}).to_dict()
    single = store.get_online_features(["profile:age"], {"user_id": 4}).to_dict()
    assert by_rows["age"] == by_cols["age"] == [4, 0, 4, None]
    assert single == {"user_id": [4], "age": [4]}
    assert store.get_online_features(["profile:age"], []).to_dict() == {"age": []}


def test_many_entities_cross_chunks(store):
    n = 1300  # more than one IN (...) chunk
    store.write_to_online_store(
        "profile", {"user_id": list(range(n)), "age": list(range(n)), "event_timestamp": [T0] * n}
    )
    keys = list(range(n + 50))[::-1]
    got = store.get_online_features(["profile:age"], {"user_id": keys}).to_dict()["age"]
    assert got == [k if k < n else None for k in keys]


def test_ttl_enforced_on_read(store, clock):
    store.write_to_online_store("profile", [row(1, ts=T0 - 100), row(2, ts=T0 - 3000)])
    clock.advance(1000)  # user 2 is now 4000 s old, TTL is 3600 s
    resp = store.get_online_features(["profile:age", "profile:city"], {"user_id": [1, 2, 3]})
    assert resp.to_dict()["age"] == [30, None, None]
    assert resp.statuses["city"] == [FieldStatus.PRESENT, FieldStatus.OUTSIDE_MAX_AGE, FieldStatus.NOT_FOUND]
    one = store.get_online_features(["profile:age"], [{"user_id": 2}])
    assert one.statuses["age"] == [FieldStatus.OUTSIDE_MAX_AGE]
    clock.now = T0 - 3000 + 3600  # exactly at the TTL: still fresh
    assert store.get_online_features(["profile:age"], [{"user_id": 2}]).to_dict()["age"] == [30]


def test_view_without_ttl_never_expires(tmp_path, clock, user):
    fv = FeatureView(name="forever", entities=[user], schema=[Field(name="x", dtype="int64")])
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply(fv)
        s.write_to_online_store(fv, [{"user_id": 1, "x": 1, "event_timestamp": 0}])
        clock.advance(10**9)
        assert s.get_online_features(["forever:x"], [{"user_id": 1}]).statuses["x"] == [FieldStatus.PRESENT]


def test_older_event_never_overwrites_newer(store):
    store.write_to_online_store("profile", [row(1, ts=T0 - 5, age=2)])
    store.write_to_online_store("profile", [row(1, ts=T0 - 50, age=1)])
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [2]
    # Within one batch too, whatever the order.
    store.write_to_online_store("profile", [row(7, ts=T0 - 1, age=9), row(7, ts=T0 - 9, age=3)])
    assert store.get_online_features(["profile:age"], [{"user_id": 7}]).to_dict()["age"] == [9]
    # Equal time: the later write wins.
    store.write_to_online_store("profile", [row(1, ts=T0 - 5, age=5)])
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [5]


def test_timestamps_keep_microseconds_and_accept_aware_datetimes(store, clock):
    when = dt.datetime(2023, 11, 14, 23, 13, 19, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    store.write_to_online_store("profile", [row(1, ts=when, age=1)])
    store.write_to_online_store("profile", [row(1, ts=T0 - 1 + 0.123455, age=2)])  # 1 µs older: ignored
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [1]
    store.write_to_online_store("profile", [row(1, ts=np.datetime64("2023-11-14T22:13:19.123457"), age=3)])
    assert store.get_online_features(["profile:age"], [{"user_id": 1}]).to_dict()["age"] == [3]
    assert store.stats()[0]["newest_event_us"] == 1_699_999_999_123_457


def test_missing_feature_is_stored_as_missing(store):
    store.write_to_online_store("profile", [{"user_id": 1, "age": 3, "event_timestamp": T0}])
    resp = store.get_online_features(["profile:age", "profile:city"], [{"user_id": 1}])
    assert resp.to_dict()["city"] == [None]
    assert resp.statuses["city"] == [FieldStatus.NOT_FOUND]


def test_dict_of_numpy_columns_and_dataframes(store):
    n = 4
    store.write_to_online_store(
        "profile",
        {
            "user_id": np.arange(n),
            "age": np.arange(n, dtype=np.int32),
            "score": np.linspace(0, 1, n),
            "ctr": np.ones(n, dtype=np.float32) / 3,
            "vip": np.array([True, False, True, False]),
            "city": np.array(["a", "b", "c", "d"]),
            "emb": np.ones((n, 3)),
            "event_timestamp": np.array([T0] * n),
        },
    )
    d = store.get_online_features(ALL, {"user_id": [0, 3]}).to_dict()
    assert d["age"] == [0, 3]
    assert d["vip"] == [True, False]
    assert d["city"] == ["a", "d"]
    assert d["ctr"][0] == float(np.float32(1 / 3))
    df = pd.DataFrame(
        {
            "user_id": [10, 11],
            "age": [1, 2],
            "event_timestamp": pd.to_datetime([T0, T0 - 1], unit="s").tz_localize("UTC").tz_convert("Asia/Tokyo"),
        }
    )
    store.write_to_online_store("profile", df)
    assert store.get_online_features(["profile:age"], {"user_id": [10, 11]}).to_dict()["age"] == [1, 2]
    naive = df.assign(event_timestamp=pd.to_datetime([T0, T0], unit="s"))
    with pytest.raises(RowValidationError, match="naive datetime column"):
        store.write_to_online_store("profile", naive)


@pytest.mark.parametrize(
    ("bad", "row_index", "column", "needle"),
    [
        ({"nope": 1}, 1, "nope", "unknown feature"),
        ({"age": "30"}, 1, "age", "expected an int64, got str"),
        ({"age": 1.5}, 1, "age", "expected an int64"),
        ({"age": True}, 1, "age", "expected an int64, got bool"),
        ({"age": 2**63}, 1, "age", "out of the int64 range"),
        ({"score": float("nan")}, 1, "score", "NaN is not allowed"),
        ({"ctr": 1e39}, 1, "ctr", "out of the float32 range"),
        ({"score": "0.5"}, 1, "score", "expected a float64"),
        ({"vip": 1}, 1, "vip", "expected a bool"),
        ({"city": 5}, 1, "city", "expected a string"),
        ({"blob": "text"}, 1, "blob", "expected bytes"),
        ({"emb": [1.0, 2.0]}, 1, "emb", r"expected 3 floats"),
        ({"emb": [1.0, float("nan"), 2.0]}, 1, "emb", "NaN is not allowed"),
        ({"user_id": None}, 1, "user_id", "join key 'user_id' is missing"),
        ({"user_id": 1.5}, 1, "user_id", "join key must be an int or a string"),
        ({"event_timestamp": None}, 1, "event_timestamp", "event_timestamp is missing"),
        ({"event_timestamp": dt.datetime(2023, 1, 1)}, 1, "event_timestamp", "naive datetime"),
        ({"event_timestamp": "2023-01-01"}, 1, "event_timestamp", "cannot use str"),
    ],
)
def test_bad_row_rejects_whole_batch(store, bad, row_index, column, needle):
    rows = [row(1), row(2), row(3)]
    rows[row_index].update(bad)
    with pytest.raises(RowValidationError, match=needle) as err:
        store.write_to_online_store("profile", rows)
    assert err.value.row == row_index
    assert err.value.column == column
    assert "nothing was written" in str(err.value)
    assert _count(store) == 0


def test_missing_key_column_and_bad_batch_shapes(store):
    with pytest.raises(RowValidationError, match="join key 'user_id' is missing"):
        store.write_to_online_store("profile", [{"age": 1, "event_timestamp": T0}])
    with pytest.raises(RowValidationError, match="column has 1 values but the others have 2"):
        store.write_to_online_store("profile", {"user_id": [1, 2], "age": [1]})
    with pytest.raises(RowValidationError, match="expected a dict per row"):
        store.write_to_online_store("profile", [row(1), (1, 2)])
    with pytest.raises(RowValidationError, match="rows must be a list of dicts"):
        store.write_to_online_store("profile", "rows")
    with pytest.raises(RowValidationError, match=r"row 1, column 'score'.*NaN"):
        store.write_to_online_store(
            "profile", {"user_id": [1, 2], "age": [1, 2], "score": np.array([0.1, np.nan]), "event_timestamp": [T0, T0]}
        )
    assert _count(store) == 0
    assert store.write_to_online_store("profile", []) == 0


def test_nan_allowed_when_declared(tmp_path, user, clock):
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="x", dtype="float64", allow_nan=True)])
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        s.write_to_online_store("v", [{"user_id": 1, "x": float("nan"), "event_timestamp": T0}])
        s.write_to_online_store("v", {"user_id": [2, 3], "x": np.array([np.nan, 1.5]), "event_timestamp": [T0, T0]})
        resp = s.get_online_features(["v:x"], {"user_id": [1, 2, 3]})
        got = resp.to_dict()["x"]
        assert math.isnan(got[0])
        assert math.isnan(got[1])
        assert got[2] == 1.5
        assert resp.statuses["x"] == [FieldStatus.PRESENT] * 3


def test_unknown_names_list_what_exists(store):
    with pytest.raises(UnknownNameError, match=r"unknown feature view 'nope'; available: profile"):
        store.get_online_features(["nope:x"], [{"user_id": 1}])
    with pytest.raises(UnknownNameError, match=r"unknown feature 'profile:agee'; available: .*profile:age, "):
        store.get_online_features(["profile:agee"], [{"user_id": 1}])
    with pytest.raises(UnknownNameError, match=r"unknown feature view 'other'; available: profile"):
        store.write_to_online_store("other", [row(1)])
    with pytest.raises(FeatureStoreError, match="must look like 'view:feature'"):
        store.get_online_features(["profile.age"], [{"user_id": 1}])
    with pytest.raises(FeatureStoreError, match="no features requested"):
        store.get_online_features([], [{"user_id": 1}])
    with pytest.raises(RowValidationError, match="join key 'user_id' is missing"):
        store.get_online_features(["profile:age"], [{"uid": 1}])
    with pytest.raises(RowValidationError, match=r"row 1, column 'user_id'.*join key must be an int or a string"):
        store.get_online_features(["profile:age"], [{"user_id": 1}, {"user_id": 1.5}])


def test_name_clash_needs_full_feature_names(store, user):
    other = FeatureView(name="other", entities=[user], schema=[Field(name="age", dtype="int64")])
    store.apply([other])
    with pytest.raises(FeatureStoreError, match="full_feature_names=True"):
        store.get_online_features(["profile:age", "other:age"], [{"user_id": 1}])
    store.write_to_online_store("other", [{"user_id": 1, "age": 99, "event_timestamp": T0}])
    store.write_to_online_store("profile", [row(1)])
    d = store.get_online_features(["profile:age", "other:age"], [{"user_id": 1}], full_feature_names=True).to_dict()
    assert d == {"user_id": [1], "profile__age": [30], "other__age": [99]}


def test_string_and_composite_keys(tmp_path, clock):
    user = Entity(name="user", join_keys=["user_id"])
    merchant = Entity(name="merchant", join_keys=["merchant_id", "region"])
    fv = FeatureView(name="pair", entities=[user, merchant], schema=[Field(name="n", dtype="int64")])
    with FeatureStore(tmp_path / "f.db", clock=clock) as s:
        s.apply([fv])
        s.write_to_online_store(
            "pair",
            [
                {"user_id": 1, "merchant_id": "m1", "region": "eu", "n": 1, "event_timestamp": T0},
                {"user_id": 1, "merchant_id": "m1", "region": "us", "n": 2, "event_timestamp": T0},
            ],
        )
        assert s.join_keys("pair") == ("user_id", "merchant_id", "region")
        rows = [{"user_id": 1, "merchant_id": "m1", "region": r} for r in ("us", "eu", "asia")]
        assert s.get_online_features(["pair:n"], rows).to_dict()["n"] == [2, 1, None]
        assert s.get_online_features(["pair:n"], rows[:1]).to_dict()["n"] == [2]
        # An int key and a string key are different entities.
        assert s.get_online_features(["pair:n"], [{"user_id": "1", "merchant_id": "m1", "region": "us"}]).to_dict()[
            "n"
        ] == [None]


def test_closed_store_refuses_work(tmp_path, profile):
    s = FeatureStore(tmp_path / "f.db")
    s.apply([profile])
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreClosedError):
        s.get_online_features(["profile:age"], [{"user_id": 1}])
    with pytest.raises(StoreClosedError):
        s.write_to_online_store("profile", [row(1)])


def test_unopenable_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(FeatureStoreError, match=r"cannot open feature store .*junk\.db"):
        FeatureStore(junk)
    with pytest.raises(FeatureStoreError, match="cannot open feature store"):
        FeatureStore(tmp_path / "no" / "such" / "dir" / "f.db")


def test_memory_store(profile, clock):
    with FeatureStore(":memory:", clock=clock) as s:
        s.apply([profile])
        s.write_to_online_store("profile", [row(1), row(2)])
        assert s.get_online_features(["profile:age"], {"user_id": [1, 2]}).to_dict()["age"] == [30, 30]
        assert s.list_entities("profile") == [{"user_id": 1}, {"user_id": 2}]
        assert str(s.path) == ":memory:"


def test_single_entity_fast_path_falls_back_for_unusual_keys(store):
    store.write_to_online_store("profile", [row(1, age=8)])
    assert store.get_online_features(["profile:age"], [{"user_id": np.int64(1)}]).to_dict()["age"] == [8]
    with pytest.raises(
        RowValidationError, match=r"entity_rows, row 0, column 'user_id': join key 'user_id' is missing"
    ):
        store.get_online_features(["profile:age"], [{"user_id": None}])
    with pytest.raises(RowValidationError, match="expected a dict per entity row"):
        store.get_online_features(["profile:age"], [[1]])


def test_out_of_range_keys_and_timestamps(store):
    with pytest.raises(RowValidationError, match=r"row 1, column 'user_id'.*out of the int64 range"):
        store.write_to_online_store("profile", [row(1), row(2**63)])
    with pytest.raises(RowValidationError, match=r"row 1, column 'event_timestamp'.*out of range"):
        store.write_to_online_store("profile", [row(1), row(2, ts=10**13)])
    with pytest.raises(RowValidationError, match=r"row 0, column 'event_timestamp'.*out of range"):
        store.write_to_online_store("profile", {"user_id": np.array([1]), "event_timestamp": np.array([1e300])})
    with pytest.raises(RowValidationError, match=r"row 0, column 'event_timestamp'.*not finite or out of range"):
        store.write_to_online_store("profile", {"user_id": np.array([1]), "event_timestamp": np.array([np.nan])})
    assert _count(store) == 0
    with pytest.raises(RowValidationError, match=r"entity_rows, row 0, column 'user_id'.*int64 range"):
        store.get_online_features(["profile:age"], [{"user_id": 2**64}])
    with pytest.raises(RowValidationError, match=r"entity_rows, row 1, column 'user_id'.*int64 range"):
        store.get_online_features(["profile:age"], {"user_id": [1, -(2**70)]})


def test_a_tombstone_with_an_event_time_never_deletes_a_newer_row(store, clock):
    store.write_to_online_store("profile", [row(1, clock() - 100), row(2, clock() - 100), row(3, clock() - 100)])
    deleted = store.delete_from_online_store(
        "profile",
        [
            {"user_id": 1, "event_timestamp": clock() - 200},  # older than the row: kept
            {"user_id": 2, "event_timestamp": clock() - 50},  # newer: deleted
            {"user_id": 3},  # no time: deleted
        ],
    )
    assert deleted == 2
    assert store.get_online_features(["profile:age"], {"user_id": [1, 2, 3]}).to_dict()["age"] == [30, None, None]
    # columns with a datetime64 array, as the sync agent passes them
    store.write_to_online_store("profile", [row(4, clock() - 100), row(5, clock() - 100)])
    stamps = np.array([round((clock() - 300) * 1e6), round((clock() - 10) * 1e6)], dtype="datetime64[us]")
    assert store.delete_from_online_store("profile", {"user_id": [4, 5], "event_timestamp": stamps}) == 1
    assert store.get_online_features(["profile:age"], {"user_id": [4, 5]}).to_dict()["age"] == [30, None]
    with pytest.raises(RowValidationError, match="naive datetime"):
        store.delete_from_online_store("profile", [{"user_id": 4, "event_timestamp": dt.datetime(2026, 1, 1)}])
