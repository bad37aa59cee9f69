"""read_entity gives exactly what get_online_features gives for one entity row, in flat lists."""

from __future__ import annotations

import numpy as np
import pytest
from _fs_helpers import row
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime import FieldStatus, OnDemandFeatureView, RequestSource, RowValidationError
from edge_runtime.features import Field

PROFILE = ["profile:age", "profile:score", "profile:ctr", "profile:vip", "profile:city", "profile:blob", "profile:emb"]
STREAM = ["orders:events_count_10m", "orders:amount_sum_10m", "orders:amount_mean_1h", "orders:items_max_1h"]


def _flat(response, names):
    st_ = response.statuses
    return (
        [response.values(n)[0] for n in names],
        [st_[n][0] for n in names],
        [response.expiry_us(n)[0] for n in names],
    )


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and np.array_equal(a, b)
    return a == b


@pytest.fixture
def full(store, orders_view):
    store.apply([orders_view])
    return store


def _check(store, refs, entity_row):
    read = store.read_entity(refs, entity_row, full_feature_names=True)
    response = store.get_online_features(refs, [entity_row], full_feature_names=True)
    values, statuses, expiry = _flat(response, read.names)
    assert read.names == response.feature_names
    assert all(_same(a, b) for a, b in zip(read.values, values, strict=True))
    assert read.statuses == statuses
    assert read.expiry_us == expiry
    return read


def test_present_missing_and_expired_values(full, clock) -> None:
    full.write_to_online_store("profile", [row(1, clock() - 10), row(2, clock() - 7200), row(3, clock(), score=None)])
    full.push_events("order_events", [{"user_id": 1, "amount": 4.0, "items": 2, "event_timestamp": clock() - 5}])
    refs = PROFILE + STREAM
    present = _check(full, refs, {"user_id": 1})
    assert present.statuses[:7] == [FieldStatus.PRESENT] * 7
    assert present.values[7:] == [1, 4.0, 4.0, 2]
    assert present.expiry_us[0] == round((clock() - 10 + 3600) * 1e6)
    expired = _check(full, refs, {"user_id": 2})
    assert expired.statuses[0] is FieldStatus.OUTSIDE_MAX_AGE
    null = _check(full, refs, {"user_id": 3})
    assert null.statuses[1] is FieldStatus.NOT_FOUND
    absent = _check(full, refs, {"user_id": 99})
    assert absent.statuses[0] is FieldStatus.NOT_FOUND
    assert absent.values[7] == 0  # a count over no events


def test_on_demand_views_and_odd_keys_take_the_general_path(full, clock) -> None:
    req = RequestSource(name="req", schema=[Field(name="bonus", dtype="float64")])
    odfv = OnDemandFeatureView(
        name="boosted",
        sources=[full.get_view("profile"), req],
        schema=[Field(name="boosted", dtype="float64")],
        udf=lambda cols: {"boosted": [s + b for s, b in zip(cols["score"], cols["bonus"], strict=True)]},
    )
    full.apply([req, odfv])
    full.write_to_online_store("profile", [row(1, clock())])
    read = _check(full, ["boosted:boosted", "profile:age"], {"user_id": 1, "bonus": 2.0})
    assert read.values[0] == pytest.approx(2.5)
    _check(full, ["profile:age"], {"user_id": np.int64(1)})  # a numpy key is converted, not refused
    with pytest.raises(RowValidationError, match="user_id"):
        full.read_entity(["profile:age"], {"other": 1})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    age=st.one_of(st.none(), st.integers(-(2**40), 2**40)),
    written_ago=st.floats(0, 7200),
    user_id=st.integers(0, 5),
    events=st.lists(st.tuples(st.floats(0, 4000), st.floats(-100, 100), st.integers(0, 9)), max_size=5),
)
def test_matches_get_online_features(full, clock, age, written_ago, user_id, events) -> None:
    full.write_to_online_store("profile", [row(user_id, clock() - written_ago, age=age)])
    full.push_events(
        "order_events",
        [{"user_id": user_id, "amount": a, "items": i, "event_timestamp": clock() - ago} for ago, a, i in events],
    )
    _check(full, PROFILE + STREAM, {"user_id": user_id})
    clock.advance(1)
