"""The envelope codec: roundtrips, compression, limits, and rejection of everything malformed."""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync import DecodeError, EncodeError, MessageTooLargeError, ProtocolError
from cloud_sync.protocol import MAGIC, PROTOCOL_VERSION, Codec, Envelope, MessageType, new_message_id

DEVICE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,20}", fullmatch=True)
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
U63 = st.integers(0, 2**63 - 1)
BODIES = st.one_of(st.binary(max_size=3000), st.binary(min_size=1, max_size=40).map(lambda b: b * 100))
CODEC = Codec()


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    first = draw(U63)
    return Envelope(
        type=draw(st.sampled_from(MessageType)),
        device=draw(st.one_of(st.just("*"), DEVICE_IDS)),
        body=draw(BODIES),
        stream=draw(st.one_of(st.just(""), NAMES)),
        epoch=draw(U63),
        seq_first=first,
        seq_last=draw(st.integers(first, 2**63 - 1)),
        content_type=draw(st.text(min_size=1, max_size=40)),
        message_id=draw(st.binary(min_size=16, max_size=16)),
        sent_at=draw(U63),
        signature=draw(st.one_of(st.none(), st.binary(max_size=96))),
    )


def _frame(fields: list[object], version: int = PROTOCOL_VERSION) -> bytes:
    """A frame with a correct CRC around arbitrary header fields (to reach the checks behind the CRC)."""
    frame = MAGIC + bytes([version]) + msgpack.packb(fields, use_bin_type=True)
    return frame + struct.pack("<I", zlib.crc32(frame))


def _valid_fields(**changes: object) -> list[object]:
    base = {
        "type": "ack",
        "id": b"\x01" * 16,
        "device": "d",
        "stream": "s",
        "epoch": 1,
        "first": 2,
        "last": 3,
        "ctype": "application/msgpack",
        "compression": "none",
        "sent_at": 5,
        "sig": None,
        "body": b"xyz",
    }
    base.update(changes)
    return list(base.values())


@settings(deadline=None)
@given(envelopes(), st.sampled_from([None, True, False]))
def test_roundtrip(envelope, compress):
    payload = CODEC.encode(envelope, compress=compress)
    decoded = CODEC.decode(payload)
    assert dataclasses.replace(decoded, compression="none") == envelope
    assert decoded.compression == ("zlib" if compress else "none" if compress is False else decoded.compression)
    assert len(payload) <= CODEC.max_message_bytes


def test_compression_is_used_only_when_it_helps():
    repetitive = Envelope(type=MessageType.ACK, device="d", body=b"abc" * 1000)
    random_body = Envelope(type=MessageType.ACK, device="d", body=random.Random(0).randbytes(512))
    small = Envelope(type=MessageType.ACK, device="d", body=b"a" * 100)
    assert CODEC.decode(CODEC.encode(repetitive)).compression == "zlib"
    assert len(CODEC.encode(repetitive)) < 200
    assert CODEC.decode(CODEC.encode(random_body)).compression == "none"
    assert CODEC.decode(CODEC.encode(small)).compression == "none"


def test_signing_bytes_ignore_compression_and_signature():
    env = Envelope(type=MessageType.MODEL_MANIFEST, device="*", body=b"m" * 5000)
    decoded = CODEC.decode(CODEC.encode(dataclasses.replace(env, signature=b"sig")))
    assert decoded.compression == "zlib"
    assert decoded.signing_bytes() == env.signing_bytes()
    assert dataclasses.replace(env, epoch=1).signing_bytes() != env.signing_bytes()


def test_message_ids_are_unique_and_time_ordered():
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 16 for i in ids)
    assert [i[:6] for i in ids] == sorted(i[:6] for i in ids)


def test_encode_refuses_oversized_messages():
    codec = Codec(max_message_bytes=1000)
    env = Envelope(type=MessageType.MODEL_CHUNK, device="d", body=random.Random(1).randbytes(2048))
    with pytest.raises(MessageTooLargeError) as exc:
        codec.encode(env)
    assert exc.value.limit == 1000
    assert exc.value.size > 1000
    with pytest.raises(MessageTooLargeError):
        Codec(max_body_bytes=10).encode(env)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "nope"}, "type"),
        ({"device": "a/b"}, "device"),
        ({"stream": "bad name"}, "stream"),
        ({"epoch": -1}, "epoch"),
        ({"seq_first": True}, "seq_first"),
        ({"seq_first": 5, "seq_last": 4}, "seq_first"),
        ({"message_id": b"short"}, "message_id"),
        ({"body": "text"}, "body"),
        ({"content_type": ""}, "content_type"),
        ({"compression": "lz4"}, "compression"),
    ],
)
def test_envelope_validates_its_fields(changes, field):
    args = {"type": MessageType.ACK, "device": "d", **changes}
    with pytest.raises(EncodeError) as exc:
        Envelope(**args)
    assert exc.value.field == field
    assert isinstance(exc.value, ProtocolError)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "truncated"),
        (b"ESP\x01", "truncated"),
        (b"XYZ\x01" + b"\x00" * 20, "magic"),
        (_frame(_valid_fields(), version=2), "version"),
        (_frame(_valid_fields())[:-1] + b"\x00", "checksum"),
        (_frame(_valid_fields())[:-5] + _frame(_valid_fields())[-4:], "checksum"),
        (_frame(["ack", 1, 2]), "malformed"),
        (_frame({"not": "a list"}), "malformed"),  # type: ignore[arg-type]
        (_frame(_valid_fields(type="features.frobnicate")), "type"),
        (_frame(_valid_fields(type=7)), "type"),
        (_frame(_valid_fields(id="not bytes")), "field"),
        (_frame(_valid_fields(id=b"short")), "field"),
        (_frame(_valid_fields(epoch=-3)), "field"),
        (_frame(_valid_fields(epoch=True)), "field"),
        (_frame(_valid_fields(first=9, last=2)), "field"),
        (_frame(_valid_fields(device="a/b")), "field"),
        (_frame(_valid_fields(body="str")), "field"),
        (_frame(_valid_fields(sig=5)), "field"),
        (_frame(_valid_fields(compression="lz4")), "compression"),
        (_frame(_valid_fields(compression="zlib", body=b"not zlib")), "compression"),
        (_frame(_valid_fields(compression="zlib", body=zlib.compress(b"x" * 100)[:-3])), "compression"),
        (_frame(_valid_fields(compression="zlib", body=zlib.compress(b"x") + b"junk")), "compression"),
        (MAGIC + bytes([1]) + b"\xc1" + struct.pack("<I", zlib.crc32(MAGIC + bytes([1]) + b"\xc1")), "malformed"),
    ],
)
def test_decode_rejections_name_the_problem(payload, reason):
    with pytest.raises(DecodeError) as exc:
        CODEC.decode(payload)
    assert exc.value.reason == reason, str(exc.value)


def test_decode_rejects_oversized_input_and_non_bytes():
    with pytest.raises(DecodeError) as exc:
        Codec(max_message_bytes=100).decode(b"ESP\x01" + b"\x00" * 200)
    assert exc.value.reason == "oversized"
    with pytest.raises(DecodeError):
        CODEC.decode("a str")  # type: ignore[arg-type]


def test_decompression_bomb_is_capped():
    bomb = zlib.compress(b"\x00" * (20 * 1024 * 1024), 9)
    assert len(bomb) < CODEC.max_message_bytes
    with pytest.raises(DecodeError) as exc:
        CODEC.decode(_frame(_valid_fields(compression="zlib", body=bomb)))
    assert exc.value.reason == "bomb"
    small = Codec(max_body_bytes=1000)
    with pytest.raises(DecodeError) as exc:
        small.decode(_frame(_valid_fields(compression="zlib", body=zlib.compress(b"a" * 1001))))
    assert exc.value.reason == "bomb"
    with pytest.raises(DecodeError) as exc:
        small.decode(_frame(_valid_fields(body=b"a" * 1001)))
    assert exc.value.reason == "oversized"


def test_trailing_header_fields_from_newer_senders_are_ignored():
    decoded = CODEC.decode(_frame([*_valid_fields(), "future field", 42]))
    assert decoded.type is MessageType.ACK
    assert decoded.body == b"xyz"


def test_codec_limits_are_validated():
    with pytest.raises(ProtocolError):
        Codec(max_message_bytes=10)
    with pytest.raises(ProtocolError):
        Codec(compression_level=11)
    assert Codec().with_limits(max_message_bytes=5000).max_message_bytes == 5000


# --- fuzzing: decode raises DecodeError or returns an Envelope, never anything else ------------------------

FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _decode_or_reject(payload: bytes) -> Envelope | None:
    try:
        return CODEC.decode(payload)
    except DecodeError:
        return None


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(payload):
    _decode_or_reject(payload)
    _decode_or_reject(MAGIC + bytes([PROTOCOL_VERSION]) + payload)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_behind_a_valid_crc(payload):
    frame = MAGIC + bytes([PROTOCOL_VERSION]) + payload
    _decode_or_reject(frame + struct.pack("<I", zlib.crc32(frame)))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    envelope = draw(envelopes())
    payload = bytearray(CODEC.encode(envelope, compress=draw(st.booleans())))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(payload) - 1, 0)))
        if op == "flip" and payload:
            payload[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and payload:
            payload[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            payload[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and payload:
            del payload[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del payload[pos:]
    if draw(st.booleans()) and len(payload) > 4:  # reach the checks behind the CRC too
        payload[-4:] = struct.pack("<I", zlib.crc32(bytes(payload[:-4])))
    return bytes(payload)


@FUZZ
@given(mutated())
def test_fuzz_mutated_valid_messages(payload):
    result = _decode_or_reject(payload)
    if result is not None:
        # Whatever is accepted re-encodes into a frame that decodes to the same envelope.
        again = CODEC.decode(CODEC.encode(result))
        assert dataclasses.replace(again, compression="none") == dataclasses.replace(result, compression="none")
