"""Definitions validate themselves when built, and errors name the thing and the expectation."""

from __future__ import annotations

import datetime as dt

import pytest

from edge_runtime import (
    Aggregation,
    DefinitionError,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    RequestSource,
    StreamFeatureView,
    on_demand_feature_view,
)


def test_entity_defaults_and_freezing():
    e = Entity(name="user")
    assert e.join_keys == ("user",)
    with pytest.raises(AttributeError):
        e.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Entity("user", ["user_id"])  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "1user"}, "name '1user' is invalid"),
        ({"name": "user", "join_keys": "user_id"}, "join_keys must be a list"),
        ({"name": "user", "join_keys": ["a", "a"]}, "join keys repeat"),
        ({"name": "user", "join_keys": ["event_ts"]}, "reserved"),
        ({"name": "user", "join_keys": ["bad key"]}, "join key"),
    ],
)
def test_entity_errors(kwargs, needle):
    with pytest.raises(DefinitionError, match=needle):
        Entity(**kwargs)


@pytest.mark.parametrize(
    "dtype", ["int64", "float32", "float64", "bool", "string", "bytes", "float32[1]", "float32[768]"]
)
def test_field_dtypes(dtype):
    assert Field(name="f", dtype=dtype).type.name == dtype


@pytest.mark.parametrize("dtype", ["int32", "float", "float32[0]", "float64[3]", "float32[]", 5, None])
def test_field_bad_dtype_lists_valid_ones(dtype):
    with pytest.raises(DefinitionError, match=r"unknown dtype .*expected one of int64, float32") as err:
        Field(name="f", dtype=dtype)
    assert err.value.key == "dtype"


def test_field_reserved_name():
    with pytest.raises(DefinitionError, match="reserved"):
        Field(name="event_timestamp", dtype="int64")


def test_feature_view_validation():
    user = Entity(name="user", join_keys=["user_id"])
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")], ttl=90)
    assert fv.ttl == dt.timedelta(seconds=90)
    assert fv.join_keys == ("user_id",)
    with pytest.raises(DefinitionError, match="at least one entity"):
        FeatureView(name="v", entities=[], schema=[Field(name="a", dtype="int64")])
    with pytest.raises(DefinitionError, match="schema is empty"):
        FeatureView(name="v", entities=[user], schema=[])
    with pytest.raises(DefinitionError, match="repeats"):
        FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")] * 2)
    with pytest.raises(DefinitionError, match="also a join key"):
        FeatureView(name="v", entities=[user], schema=[Field(name="user_id", dtype="int64")])
    with pytest.raises(DefinitionError, match="ttl must be positive"):
        FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")], ttl=0)
    with pytest.raises(DefinitionError, match="timedelta or a number"):
        FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")], ttl="1h")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="max_rows must be a positive int"):
        FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")], max_rows=0)
    with pytest.raises(DefinitionError, match="entities must be Entity"):
        FeatureView(name="v", entities=["user"], schema=[Field(name="a", dtype="int64")])  # type: ignore[list-item]
    with pytest.raises(DefinitionError, match="schema items must be Field"):
        FeatureView(name="v", entities=[user], schema=[("a", "int64")])  # type: ignore[list-item]


def test_aggregation_names_and_errors():
    assert Aggregation(column="amount", function="sum", window=600).name == "amount_sum_10m"
    assert Aggregation(column=None, function="count", window=dt.timedelta(hours=1)).name == "events_count_1h"
    assert Aggregation(column="x", function="max", window=90).name == "x_max_90s"
    assert Aggregation(column="x", function="max", window=86400 * 2, name="big").name == "big"
    with pytest.raises(DefinitionError, match="one of count, sum, mean, min, max"):
        Aggregation(column="x", function="median", window=60)
    with pytest.raises(DefinitionError, match="needs a column"):
        Aggregation(column=None, function="sum", window=60)
    with pytest.raises(DefinitionError, match="window must be positive"):
        Aggregation(column="x", function="sum", window=-1)


def test_stream_view_validation():
    user = Entity(name="user", join_keys=["user_id"])
    schema = [Field(name="amount", dtype="float64"), Field(name="note", dtype="string")]
    sv = StreamFeatureView(
        name="s",
        entities=[user],
        source="events",
        schema=schema,
        aggregations=[Aggregation(column="amount", function="mean", window=60)],
    )
    assert [f.dtype for f in sv.features] == ["float64"]
    with pytest.raises(DefinitionError, match="not in the schema"):
        StreamFeatureView(
            name="s",
            entities=[user],
            source="events",
            schema=schema,
            aggregations=[Aggregation(column="nope", function="sum", window=60)],
        )
    with pytest.raises(DefinitionError, match="needs a numeric column"):
        StreamFeatureView(
            name="s",
            entities=[user],
            source="events",
            schema=schema,
            aggregations=[Aggregation(column="note", function="sum", window=60)],
        )
    with pytest.raises(DefinitionError, match="at least one aggregation"):
        StreamFeatureView(name="s", entities=[user], source="events", schema=schema, aggregations=[])
    with pytest.raises(DefinitionError, match="repeats"):
        StreamFeatureView(
            name="s",
            entities=[user],
            source="events",
            schema=schema,
            aggregations=[Aggregation(column="amount", function="sum", window=60)] * 2,
        )


def test_on_demand_view_and_decorator():
    user = Entity(name="user", join_keys=["user_id"])
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64")])
    req = RequestSource(name="r", schema=[Field(name="b", dtype="float64")])

    @on_demand_feature_view(sources=[fv, req], schema=[Field(name="c", dtype="float64")])
    def combined(inputs):
        return {"c": [a + b for a, b in zip(inputs["a"], inputs["b"], strict=True)]}

    assert isinstance(combined, OnDemandFeatureView)
    assert combined.name == "combined"
    assert combined.udf({"a": [1], "b": [0.5]}) == {"c": [1.5]}
    clash = RequestSource(name="r2", schema=[Field(name="a", dtype="int64")])
    with pytest.raises(DefinitionError, match="input 'a' comes from both 'v' and 'r2'"):
        OnDemandFeatureView(name="o", sources=[fv, clash], schema=[Field(name="c", dtype="int64")], udf=len)
    with pytest.raises(DefinitionError, match="udf must be callable"):
        OnDemandFeatureView(name="o", sources=[fv], schema=[Field(name="c", dtype="int64")], udf=3)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="a source must be"):
        OnDemandFeatureView(name="o", sources=[user], schema=[Field(name="c", dtype="int64")], udf=len)  # type: ignore[list-item]


def test_feature_service_expands_views():
    user = Entity(name="user", join_keys=["user_id"])
    fv = FeatureView(name="v", entities=[user], schema=[Field(name="a", dtype="int64"), Field(name="b", dtype="bool")])
    svc = FeatureService(name="s", features=[fv, "w:x", "v:a"])
    assert svc.features == ("v:a", "v:b", "w:x")
    with pytest.raises(DefinitionError, match="bad feature"):
        FeatureService(name="s", features=["no_colon"])
    with pytest.raises(DefinitionError, match="no features"):
        FeatureService(name="s", features=[])
