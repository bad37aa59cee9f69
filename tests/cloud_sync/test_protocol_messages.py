"""Typed message bodies: roundtrips for every type and fuzzed bodies that must fail only with DecodeError."""

from __future__ import annotations

import hashlib
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync import DecodeError, EncodeError
from cloud_sync.protocol import (
    BODY_TYPES,
    Ack,
    CatchUpRequest,
    Codec,
    Envelope,
    FeatureBatch,
    Hello,
    InstallReport,
    MessageType,
    ModelChunk,
    ModelChunkRequest,
    ModelManifestMessage,
    Status,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    check_route,
    decode_message,
    read_message,
    to_envelope,
)

CODEC = Codec()
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
U63 = st.integers(0, 2**63 - 1)
VERSIONS = st.integers(1, 2**63 - 1)
ID16 = st.binary(min_size=16, max_size=16)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text())


@st.composite
def manifests(draw: st.DrawFn) -> ModelManifestMessage:
    size = draw(st.integers(0, 5000))
    chunk_size = draw(st.integers(1, 700))
    count = math.ceil(size / chunk_size) if size else 0
    return ModelManifestMessage(
        model=draw(NAMES),
        version=draw(VERSIONS),
        manifest=draw(st.binary(max_size=300)),
        signature=draw(st.binary(max_size=100)),
        size=size,
        sha256=draw(st.binary(min_size=32, max_size=32)),
        chunk_size=chunk_size,
        chunk_sha256=tuple(hashlib.sha256(bytes([i % 256])).digest() for i in range(count)),
    )


MESSAGES = st.one_of(
    st.builds(CatchUpRequest, NAMES, U63, U63, st.sampled_from(["gap", "new_epoch", "no_state"]), U63, U63),
    st.builds(
        Hello,
        st.text(max_size=30),
        st.dictionaries(NAMES, st.tuples(U63, U63), max_size=5),
        st.dictionaries(NAMES, U63, max_size=5),
        st.integers(0, 65535),
        st.lists(st.text(max_size=10), max_size=4).map(tuple),
    ),
    st.builds(Ack, ID16, NAMES, U63, U63, st.sampled_from(["applied", "duplicate", "rejected"]), st.text(max_size=50)),
    manifests(),
    st.builds(
        ModelChunkRequest, NAMES, VERSIONS, st.lists(st.integers(0, 2**20 - 1), min_size=1, max_size=8).map(tuple)
    ),
    st.builds(ModelChunk, NAMES, VERSIONS, st.integers(0, 2**20 - 1), st.binary(max_size=2000)),
    st.builds(
        InstallReport,
        NAMES,
        VERSIONS,
        st.sampled_from(["installed", "failed", "refused", "rolled_back"]),
        st.text(max_size=50),
        U63,
        U63,
    ),
    st.builds(
        Status,
        st.sampled_from(["online", "offline"]),
        st.text(max_size=20),
        st.dictionaries(NAMES, U63, max_size=3),
        st.text(max_size=20),
    ),
    st.builds(
        TelemetryBatch,
        st.lists(
            st.builds(
                TelemetryRecord,
                ID16,
                st.text(max_size=20),
                U63,
                st.dictionaries(st.text(max_size=10), SCALARS, max_size=4),
            ),
            max_size=5,
        ).map(tuple),
    ),
    st.builds(TelemetryAck, st.lists(ID16, max_size=10).map(tuple)),
)


@settings(max_examples=300, deadline=None)
@given(MESSAGES, st.sampled_from(["dev-a", "*"]))
def test_every_message_type_roundtrips(message, device):
    payload = CODEC.encode(to_envelope(message, device=device))
    envelope, decoded = decode_message(payload)
    assert envelope.type is message.TYPE
    assert envelope.device == device
    assert decoded == message


def test_every_message_type_has_a_body_class():
    assert set(BODY_TYPES) == set(MessageType)
    assert BODY_TYPES[MessageType.FEATURE_BATCH] is FeatureBatch


def test_manifest_chunk_list_must_match_the_size():
    good = ModelManifestMessage("m", 2, b"{}", b"{}", 10, b"\x00" * 32, 4, (b"\x01" * 32,) * 3)
    assert good.chunk_count == 3
    with pytest.raises(EncodeError, match="one digest per chunk"):
        ModelManifestMessage("m", 2, b"{}", b"{}", 10, b"\x00" * 32, 4, (b"\x01" * 32,) * 2).encode_body()
    body = msgpack.unpackb(good.encode_body())
    body["chunks"] = 2
    with pytest.raises(DecodeError, match="cannot hold"):
        ModelManifestMessage.decode_body(msgpack.packb(body))
    body["chunks"] = 3
    body["chunk_sha256"] = b"\x01" * 95
    with pytest.raises(DecodeError) as exc:
        ModelManifestMessage.decode_body(msgpack.packb(body))
    assert exc.value.field == "model.manifest.chunk_sha256"


@pytest.mark.parametrize(
    "message",
    [
        CatchUpRequest("s", 1, 1, "because"),
        Ack(b"\x00" * 16, "s", 1, 1, status="maybe"),
        InstallReport("m", 1, "exploded"),
        Status("sleeping"),
        ModelChunkRequest("m", 1, ()),
    ],
)
def test_invalid_enumerations_are_refused_on_encode(message):
    with pytest.raises(EncodeError):
        message.encode_body()


def test_read_message_refuses_a_foreign_content_type():
    env = Envelope(type=MessageType.ACK, device="d", body=b"{}", content_type="application/json")
    with pytest.raises(DecodeError, match="content_type"):
        read_message(env)


# --- fuzzing bodies: valid bodies with fields replaced by arbitrary msgpack values --------------------------

MSGPACK_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=10),
        st.binary(max_size=40),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reject(envelope: Envelope) -> None:
    try:
        decode_message(CODEC.encode(envelope))
    except DecodeError:
        pass


@FUZZ
@given(st.sampled_from(sorted(MessageType, key=lambda t: t.value)), MSGPACK_VALUES)
def test_fuzz_arbitrary_bodies(mtype, body):
    _decode_or_reject(Envelope(type=mtype, device="d", body=msgpack.packb(body, use_bin_type=True)))


@FUZZ
@given(MESSAGES, st.data())
def test_fuzz_valid_bodies_with_one_field_replaced(message, data):
    body = msgpack.unpackb(message.encode_body())
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(MSGPACK_VALUES)
    _decode_or_reject(Envelope(type=message.TYPE, device="d", body=msgpack.packb(body, use_bin_type=True)))


def _batch_body() -> dict:
    batch = FeatureBatch.from_columns(
        "v",
        {"a": [1, None], "f": [1.5, 2.5], "b": [True, False], "s": ["x", None], "y": [b"1", b"2"], "v": [[1.0], None]},
        tombstones={"a": [7]},
    )
    return msgpack.unpackb(batch.encode_body())


@FUZZ
@given(st.data())
def test_fuzz_feature_batch_columns(data):
    body = _batch_body()
    section = body[data.draw(st.sampled_from(["rows", "tomb"]))]
    target = data.draw(st.sampled_from(["n", "c", "column"]))
    if target == "column":
        column = data.draw(st.sampled_from(section["c"]))
        column[data.draw(st.integers(0, 3))] = data.draw(MSGPACK_VALUES)
    else:
        section[target] = data.draw(MSGPACK_VALUES)
    _decode_or_reject(Envelope(type=MessageType.FEATURE_BATCH, device="d", body=msgpack.packb(body, use_bin_type=True)))


def test_check_route_ties_the_envelope_to_its_topic():
    topics = Topics("edge")
    hello = to_envelope(Hello("1.0"), device="dev-a")
    check_route(topics.parse(topics.up("dev-a", MessageType.HELLO)), hello)
    with pytest.raises(DecodeError) as exc:
        check_route(topics.parse(topics.up("dev-b", MessageType.HELLO)), hello)
    assert (exc.value.reason, exc.value.field) == ("route", "device")
    with pytest.raises(DecodeError, match="topic"):
        check_route(topics.parse(topics.up("dev-a", MessageType.STATUS)), hello)
    batch = to_envelope(FeatureBatch.from_columns("v", {"a": [1]}), device="*", stream="v")
    check_route(topics.parse(topics.broadcast(MessageType.FEATURE_BATCH, "v")), batch)
    with pytest.raises(DecodeError, match="stream"):
        check_route(topics.parse(topics.broadcast(MessageType.FEATURE_BATCH, "w")), batch)
