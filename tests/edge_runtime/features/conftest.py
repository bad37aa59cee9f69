"""Shared fixtures of the feature-store tests: a movable clock, standard definitions, a store on a real file."""

from __future__ import annotations

import pytest
from _fs_helpers import Clock

from edge_runtime import (
    Aggregation,
    Entity,
    FeatureStore,
    FeatureView,
    Field,
    StreamFeatureView,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def user() -> Entity:
    return Entity(name="user", join_keys=["user_id"])


@pytest.fixture
def profile(user: Entity) -> FeatureView:
    return FeatureView(
        name="profile",
        entities=[user],
        schema=[
            Field(name="age", dtype="int64"),
            Field(name="score", dtype="float64"),
            Field(name="ctr", dtype="float32"),
            Field(name="vip", dtype="bool"),
            Field(name="city", dtype="string"),
            Field(name="blob", dtype="bytes"),
            Field(name="emb", dtype="float32[3]"),
        ],
        ttl=3600,
    )


@pytest.fixture
def orders_view(user: Entity) -> StreamFeatureView:
    return StreamFeatureView(
        name="orders",
        entities=[user],
        source="order_events",
        schema=[Field(name="amount", dtype="float64"), Field(name="items", dtype="int64")],
        aggregations=[
            Aggregation(column=None, function="count", window=600),
            Aggregation(column="amount", function="sum", window=600),
            Aggregation(column="amount", function="mean", window=3600),
            Aggregation(column="items", function="max", window=3600),
            Aggregation(column="items", function="min", window=3600),
            Aggregation(column="amount", function="sum", window=3600),
        ],
    )


@pytest.fixture
def store(tmp_path, clock, profile):
    s = FeatureStore(tmp_path / "features.db", clock=clock)
    s.apply([profile])
    yield s
    s.close()
