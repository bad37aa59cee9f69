"""Feature batches: columnar roundtrips for every dtype, splitting under the size limit, malformed bodies."""

from __future__ import annotations

import datetime as dt
import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync import DecodeError, EncodeError, MessageTooLargeError
from cloud_sync.protocol import (
    Codec,
    Column,
    Envelope,
    FeatureBatch,
    MessageType,
    decode_message,
    encode_feature_batches,
    to_envelope,
)

UTC = dt.timezone.utc
CODEC = Codec()
F32 = st.floats(width=32)


def _maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), strategy)


VALUE_STRATEGIES: dict[str, st.SearchStrategy[object]] = {
    "int64": st.integers(-(2**63), 2**63 - 1),
    "float32": F32,
    "float64": st.floats(),
    "bool": st.booleans(),
    "string": st.text(max_size=20),
    "bytes": st.binary(max_size=20),
    "timestamp": st.datetimes(
        min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
}
VECTOR_DIMS = st.integers(1, 5)


@st.composite
def column_data(draw: st.DrawFn, n: int) -> tuple[str, list[object]]:
    dtype = draw(st.sampled_from([*sorted(VALUE_STRATEGIES), "vector"]))
    strategy: st.SearchStrategy[object]
    if dtype == "vector":
        dim = draw(VECTOR_DIMS)
        dtype, strategy = f"float32[{dim}]", st.lists(F32, min_size=dim, max_size=dim)
    else:
        strategy = VALUE_STRATEGIES[dtype]
    values = draw(st.lists(_maybe(strategy), min_size=n, max_size=n))
    return dtype, values


@st.composite
def batches(draw: st.DrawFn) -> tuple[FeatureBatch, dict[str, tuple[str, list[object]]]]:
    n = draw(st.integers(0, 25))
    names = draw(st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True), max_size=6, unique=True))
    data = {name: draw(column_data(n)) for name in names}
    tomb_n = draw(st.integers(0, 5))
    tombstones = {"user_id": draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=tomb_n, max_size=tomb_n))}
    batch = FeatureBatch.from_columns(
        draw(st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)),
        {name: values for name, (_, values) in data.items()},
        dtypes={name: dtype for name, (dtype, _) in data.items()} | {"user_id": "int64"},
        kind=draw(st.sampled_from(["snapshot", "delta"])),
        tombstones=tombstones if tomb_n else None,
    )
    return batch, data


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, np.ndarray)) and isinstance(b, (list, np.ndarray)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(b, np.generic):
        b = b.item()
    if isinstance(a, float) and isinstance(b, float):
        return _same(a, b)
    return a == b and type(a) is type(b)


def _expected(dtype: str, values: list[object]) -> list[object]:
    """What the store should receive for ``values``: floats for float columns, µs for timestamps."""
    out: list[object] = []
    for v in values:
        if v is None:
            out.append(None)
        elif dtype == "timestamp":
            assert isinstance(v, dt.datetime)
            delta = v - dt.datetime(1970, 1, 1, tzinfo=UTC)
            out.append((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)
        elif dtype.startswith("float32["):
            assert isinstance(v, list)
            out.append([float(x) for x in v])
        elif dtype.startswith("float"):
            out.append(float(v))  # type: ignore[arg-type]
        else:
            out.append(v)
    return out


def _as_list(value: object) -> list[object]:
    if isinstance(value, np.ndarray):
        return [row.tolist() if isinstance(row, np.ndarray) else row for row in value.tolist()]
    assert isinstance(value, list)
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in value]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(batches())
def test_every_dtype_roundtrips_to_the_original_values(case):
    batch, data = case
    frames = encode_feature_batches(batch, codec=CODEC, device="dev-a", epoch=3, first_seq=10)
    assert len(frames) == 1
    envelope, decoded = decode_message(frames[0].payload)
    assert (envelope.type, envelope.stream, envelope.epoch) == (MessageType.FEATURE_BATCH, batch.view, 3)
    assert (envelope.seq_first, envelope.seq_last) == (10, 10)
    assert isinstance(decoded, FeatureBatch)
    assert decoded.equals(batch)
    columns = decoded.to_columns(timestamps="us")
    assert list(columns) == list(data)
    for name, (dtype, values) in data.items():
        assert _same(_as_list(columns[name]), _expected(dtype, values)), (name, dtype)
        assert decoded.columns[name].dtype == dtype
    assert decoded.num_tombstones == batch.num_tombstones


def test_to_columns_gives_arrays_without_nulls_and_lists_with_them():
    batch = FeatureBatch.from_columns(
        "v",
        {
            "user_id": np.arange(4, dtype=np.int64),
            "score": [1.0, None, 3.0, 4.0],
            "event_timestamp": [dt.datetime(2024, 1, 1, 0, 0, s, 500, tzinfo=UTC) for s in range(4)],
        },
    )
    _, decoded = decode_message(encode_feature_batches(batch, codec=CODEC, device="d", epoch=1, first_seq=1)[0].payload)
    assert isinstance(decoded, FeatureBatch)
    cols = decoded.to_columns()
    assert isinstance(cols["user_id"], np.ndarray)
    assert cols["user_id"].dtype == np.int64
    assert cols["score"] == [1.0, None, 3.0, 4.0]
    assert cols["event_timestamp"].dtype == np.dtype("datetime64[us]")
    assert cols["event_timestamp"][1] == np.datetime64("2024-01-01T00:00:01.000500")
    assert decoded.to_columns(timestamps="seconds")["event_timestamp"][1] == pytest.approx(1704067201.0005, abs=1e-7)
    assert decoded.to_columns(timestamps="datetime")["event_timestamp"][2] == dt.datetime(
        2024, 1, 1, 0, 0, 2, 500, tzinfo=UTC
    )
    assert decoded.columns["event_timestamp"].dtype == "timestamp"


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([1, 2], "int64"),
        ([1, 2.5], "float64"),
        ([True, None], "bool"),
        (["a", None], "string"),
        ([b"a", bytearray(b"b")], "bytes"),
        ([dt.datetime(2020, 1, 1, tzinfo=UTC)], "timestamp"),
        ([[1.0, 2.0], None], "float32[2]"),
        (np.zeros(3, np.float32), "float32"),
        (np.zeros(3, np.int32), "int64"),
        (np.zeros((3, 5)), "float32[5]"),
        (np.array(["x", "y"]), "string"),
        (np.array(["2020-01-01"], dtype="datetime64[s]"), "timestamp"),
    ],
)
def test_dtype_inference(values, dtype):
    assert Column.from_values("c", values).dtype == dtype


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        ([None, None], None, "all values are missing"),
        ([1, "a"], None, "cannot infer"),
        ([1.5], "int64", "not allowed"),
        (["1.5"], "float64", "not allowed"),
        ([2**64], "int64", "int64"),
        ([1], "complex", "unknown dtype"),
        ([[1.0, 2.0]], "float32[3]", "expected 3 numbers"),
        ([dt.datetime(2020, 1, 1)], "timestamp", "naive"),
        ([1, 2], "string", "not allowed"),
        (np.array([1.5]), "int64", "cannot store"),
    ],
)
def test_bad_columns_raise_encode_error_naming_the_column(values, dtype, message):
    with pytest.raises(EncodeError, match=message) as exc:
        Column.from_values("col", values, dtype)
    assert exc.value.field == "col"


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(EncodeError, match="different lengths"):
        FeatureBatch.from_columns("v", {"a": [1, 2], "b": [1]})
    with pytest.raises(EncodeError, match="kind"):
        FeatureBatch.from_columns("v", {"a": [1]}, kind="full")
    with pytest.raises(EncodeError, match="view"):
        FeatureBatch.from_columns("bad view", {"a": [1]})


def _big_batch(n: int) -> FeatureBatch:
    rng = np.random.default_rng(7)
    return FeatureBatch.from_columns(
        "user_stats",
        {
            "user_id": np.arange(n, dtype=np.int64),
            "score": rng.random(n),
            "embedding": rng.random((n, 8), dtype=np.float32),
            "country": [("de", "fr", "us")[i % 3] for i in range(n)],
            "event_timestamp": Column.from_epoch_us("event_timestamp", 1_700_000_000_000_000 + np.arange(n)),
        },
        kind="snapshot",
        tombstones={"user_id": np.arange(n, n + 500, dtype=np.int64)},
    )


def test_splitter_keeps_every_message_under_the_limit_and_loses_nothing():
    batch = _big_batch(20_000)
    codec = Codec(max_message_bytes=100_000)
    frames = encode_feature_batches(batch, codec=codec, device="dev-a", epoch=2, first_seq=41)
    assert len(frames) > 5
    assert all(len(f.payload) <= 100_000 for f in frames)
    parts = []
    for i, frame in enumerate(frames):
        envelope, part = decode_message(frame.payload, codec=codec)
        assert isinstance(part, FeatureBatch)
        assert (envelope.seq_first, envelope.seq_last, envelope.epoch) == (41 + i, 41 + i, 2)
        assert (part.part, part.parts, part.kind) == (i, len(frames), "snapshot")
        parts.append(part)
    for name in batch.columns:
        joined = np.concatenate([np.asarray(p.columns[name].values) for p in parts if p.num_rows])
        assert np.array_equal(joined, np.asarray(batch.columns[name].values)), name
    tomb = np.concatenate([p.tombstones["user_id"].values for p in parts if p.num_tombstones])
    assert np.array_equal(tomb, batch.tombstones["user_id"].values)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(2_000, 20_000))
def test_splitter_property(n, limit):
    batch = _big_batch(n)
    codec = Codec(max_message_bytes=limit)
    frames = encode_feature_batches(batch, codec=codec, device="d", epoch=1, first_seq=1)
    assert all(len(f.payload) <= limit for f in frames)
    parts = [decode_message(f.payload, codec=codec)[1] for f in frames]
    assert sum(p.num_rows for p in parts if isinstance(p, FeatureBatch)) == n


def test_a_row_that_cannot_fit_raises():
    batch = FeatureBatch.from_columns("v", {"blob": [bytes(np.random.default_rng(1).bytes(5000))] * 3})
    with pytest.raises(MessageTooLargeError, match="row 0 of feature view 'v' does not fit") as exc:
        encode_feature_batches(batch, codec=Codec(max_message_bytes=2000), device="d", epoch=1, first_seq=1)
    assert exc.value.limit == 2000
    assert exc.value.size > 2000
    alone = FeatureBatch.from_columns("v", {"blob": batch.columns["blob"].values[:1]})
    with pytest.raises(MessageTooLargeError, match="row 0"):
        encode_feature_batches(alone, codec=Codec(max_message_bytes=2000), device="d", epoch=1, first_seq=1)


def _body_envelope(body: object) -> Envelope:
    return Envelope(type=MessageType.FEATURE_BATCH, device="d", body=msgpack.packb(body, use_bin_type=True))


def _valid_body() -> dict:
    batch = FeatureBatch.from_columns("v", {"a": [1, 2], "b": [True, False], "s": ["x", "y"]})
    return msgpack.unpackb(batch.encode_body())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("view"), "features.batch.view"),
        (lambda b: b.update(kind="full"), "features.batch.kind"),
        (lambda b: b.update(part=3), "features.batch.part"),
        (lambda b: b["rows"].update(n=3), "features.batch.rows.a"),
        (lambda b: b["rows"]["c"][0].__setitem__(3, b"\x00" * 15), "features.batch.rows.a"),
        (lambda b: b["rows"]["c"][1].__setitem__(3, b"\x02\x00"), "features.batch.rows.b"),
        (lambda b: b["rows"]["c"][0].__setitem__(1, "int128"), "features.batch.rows.a"),
        (lambda b: b["rows"]["c"][0].__setitem__(2, b"\x00\x00"), "features.batch.rows.a"),
        (lambda b: b["rows"]["c"][2].__setitem__(3, ["x", 5]), "features.batch.rows.s"),
        (lambda b: b["rows"]["c"].append(b["rows"]["c"][0]), "features.batch.rows"),
        (lambda b: b.update(rows=[1, 2]), "features.batch.rows"),
        (lambda b: b.update(tomb={"n": -1, "c": []}), "features.batch.tomb"),
    ],
)
def test_malformed_batch_bodies_are_rejected_naming_the_field(mutate, field):
    body = _valid_body()
    mutate(body)
    with pytest.raises(DecodeError) as exc:
        decode_message(CODEC.encode(_body_envelope(body)))
    assert exc.value.field == field, str(exc.value)


def test_decoded_batch_is_the_message_type_of_its_envelope():
    batch = FeatureBatch.from_columns("v", {"a": [1]})
    env = to_envelope(batch, device="d", stream="v", epoch=1, seq=(1, 1))
    assert env.type is MessageType.FEATURE_BATCH


def test_pandas_columns_are_accepted():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "user_id": [1, 2],
            "score": [0.5, None],
            "name": ["a", "b"],
            "event_timestamp": pd.to_datetime(["2024-01-01T00:00:00.000001Z", "2024-01-02T00:00:00.000000Z"], utc=True),
        }
    )
    batch = FeatureBatch.from_columns("v", {c: frame[c] for c in frame.columns})
    dtypes = {name: col.dtype for name, col in batch.columns.items()}
    assert dtypes == {"user_id": "int64", "score": "float64", "name": "string", "event_timestamp": "timestamp"}
    cols = batch.to_columns(timestamps="us")
    assert cols["event_timestamp"].tolist() == [1704067200000001, 1704153600000000]
    assert math.isnan(cols["score"][1])  # pandas already turned None into NaN


def test_a_decoded_batch_applies_to_the_feature_store(tmp_path):
    """The columns a device decodes go straight into FeatureStore.write_to_online_store, every dtype, nulls too."""
    from edge_runtime.features import Entity, FeatureStore, FeatureView, Field

    user = Entity(name="user", join_keys=["user_id"])
    schema = {"i": "int64", "f": "float32", "d": "float64", "b": "bool", "s": "string", "y": "bytes", "e": "float32[3]"}
    view = FeatureView(name="v", entities=[user], schema=[Field(name=k, dtype=t) for k, t in schema.items()])
    store = FeatureStore(tmp_path / "features.db")
    store.apply([user, view])
    when = dt.datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    batch = FeatureBatch.from_columns(
        "v",
        {
            "user_id": [1, 2],
            "i": [7, None],
            "f": [0.5, None],
            "d": [None, 2.25],
            "b": [True, None],
            "s": ["a", None],
            "y": [None, b"\x00"],
            "e": [[1, 2, 3], None],
            "event_timestamp": [when, when],
        },
        dtypes=schema,
    )
    frame = encode_feature_batches(batch, codec=CODEC, device="dev-a", epoch=1, first_seq=1)[0]
    _, decoded = decode_message(frame.payload)
    assert isinstance(decoded, FeatureBatch)
    assert store.write_to_online_store("v", decoded.to_columns()) == 2
    got = store.get_online_features(features=[f"v:{k}" for k in schema], entity_rows=[{"user_id": 1}, {"user_id": 2}])
    values = got.to_dict()
    assert values["i"] == [7, None]
    assert values["f"] == [0.5, None]
    assert values["d"] == [None, 2.25]
    assert values["b"] == [True, None]
    assert values["s"] == ["a", None]
    assert values["y"] == [None, b"\x00"]
    assert values["e"][0].tolist() == [1.0, 2.0, 3.0]
    assert values["e"][1] is None
    store.close()
