"""The envelope every protocol message travels in, and its compact binary encoding.

Wire frame (version 1)::

    b"ESP"  version:u8  msgpack-array(fields...)  crc32:u32le

The CRC-32 covers every byte before it (magic, version, header fields and body), so a flipped bit in a sequence
number is caught just like one in the body. The fields are a positional msgpack array (compact, and a decoder of
version 1 ignores trailing fields it does not know, so fields can be appended without a new major version); see
docs/sync-protocol.md for the table.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from cloud_sync._errors import DecodeError, EncodeError, MessageTooLargeError, ProtocolError

from ._topics import BROADCAST_DEVICE, validate_device_id, validate_name
from ._types import MessageType

PROTOCOL_VERSION = 1
MAGIC = b"ESP"
_HEAD = len(MAGIC) + 1
_CRC = struct.Struct("<I")
_MIN_FRAME = _HEAD + 1 + _CRC.size
_INT_MAX = 2**63 - 1
_N_FIELDS = 12
COMPRESSIONS = ("none", "zlib")
#: Default content type of structured bodies.
MSGPACK = "application/msgpack"
_TYPES = {t.value: t for t in MessageType}


def new_message_id() -> bytes:
    """A 128-bit message id: 48 bits of milliseconds since the epoch, then 80 random bits (like a ULID).

    Random enough that two senders never collide, and time-ordered so logs and dedup tables sort by creation.
    """
    return (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Envelope:
    """One protocol message: routing and ordering metadata plus an opaque body.

    ``body`` is always the uncompressed body; ``compression`` says how it travelled (set by the decoder; the
    encoder chooses on its own unless told). ``device`` is ``"*"`` for broadcast messages. ``stream``, ``epoch``
    and ``seq_first``/``seq_last`` order feature batches (0 / empty for other types). ``signature`` is an optional
    detached signature over :meth:`signing_bytes`.
    """

    type: MessageType
    device: str
    body: bytes = field(default=b"", repr=False)
    stream: str = ""
    epoch: int = 0
    seq_first: int = 0
    seq_last: int = 0
    content_type: str = MSGPACK
    message_id: bytes = field(default_factory=new_message_id)
    sent_at: int = field(default_factory=_now_us)
    signature: bytes | None = None
    compression: str = "none"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", MessageType(self.type))
        except ValueError:
            raise EncodeError(f"unknown message type {self.type!r}", field="type") from None
        if self.device != BROADCAST_DEVICE:
            try:
                validate_device_id(self.device)
            except ProtocolError as exc:
                raise EncodeError(str(exc), field="device") from None
        if self.stream:
            try:
                validate_name(self.stream)
            except ProtocolError as exc:
                raise EncodeError(str(exc), field="stream") from None
        elif not isinstance(self.stream, str):
            raise EncodeError("must be a str", field="stream")
        for name in ("epoch", "seq_first", "seq_last", "sent_at"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= _INT_MAX:
                raise EncodeError(f"must be an int in 0..2**63-1, got {value!r}", field=name)
        if self.seq_first > self.seq_last:
            raise EncodeError(f"seq_first {self.seq_first} > seq_last {self.seq_last}", field="seq_first")
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise EncodeError(f"must be bytes, got {type(self.body).__name__}", field="body")
        if not isinstance(self.content_type, str) or not 0 < len(self.content_type) <= 128:
            raise EncodeError("must be a non-empty str of at most 128 characters", field="content_type")
        if not isinstance(self.message_id, bytes) or len(self.message_id) != 16:
            raise EncodeError("must be 16 bytes (see new_message_id)", field="message_id")
        if self.signature is not None and (not isinstance(self.signature, bytes) or len(self.signature) > 1024):
            raise EncodeError("must be None or at most 1024 bytes", field="signature")
        if self.compression not in COMPRESSIONS:
            raise EncodeError(f"must be one of {', '.join(COMPRESSIONS)}", field="compression")

    @property
    def message_id_hex(self) -> str:
        """The message id as 32 hex digits (for logs and dedup tables)."""
        return self.message_id.hex()

    def signing_bytes(self) -> bytes:
        """The bytes a signature covers: every field except ``signature`` and ``compression``, body uncompressed.

        Independent of compression so a signer need not know what the encoder will choose.
        """
        return (
            MAGIC
            + bytes([PROTOCOL_VERSION])
            + msgpack.packb(
                [
                    self.type.value,
                    self.message_id,
                    self.device,
                    self.stream,
                    self.epoch,
                    self.seq_first,
                    self.seq_last,
                    self.content_type,
                    self.sent_at,
                    bytes(self.body),
                ],
                use_bin_type=True,
            )
        )


@dataclass(frozen=True, kw_only=True)
class Codec:
    """Encodes and decodes envelopes with size limits.

    ``max_message_bytes`` bounds an encoded frame both ways (mosquitto's and most brokers' packet limits are far
    larger; keeping messages around 100 KB keeps one slow message from stalling a connection and keeps paho's
    in-memory in-flight window small). ``max_body_bytes`` caps a body after decompression, which is what stops
    a decompression bomb. Bodies of at least ``compress_min_bytes`` are zlib-compressed when that makes them
    smaller. Level 1 by default: on feature batches it encodes 2-8x faster than level 6 for 1-6 % more bytes, and
    inflating costs the device the same at any level.
    """

    max_message_bytes: int = 100_000
    max_body_bytes: int = 8 * 1024 * 1024
    compress_min_bytes: int = 256
    compression_level: int = 1

    def __post_init__(self) -> None:
        for name, low in (("max_message_bytes", 64), ("max_body_bytes", 1), ("compress_min_bytes", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < low:
                raise ProtocolError(f"Codec.{name} must be an int >= {low}, got {value!r}")
        if type(self.compression_level) is not int or not 0 <= self.compression_level <= 9:
            raise ProtocolError(f"Codec.compression_level must be 0..9, got {self.compression_level!r}")

    # --- encoding ---------------------------------------------------------------------------------------------

    def encode(self, envelope: Envelope, *, compress: bool | None = None) -> bytes:
        """The wire bytes of ``envelope``; raises MessageTooLargeError when over ``max_message_bytes``.

        ``compress``: None chooses (compress when it helps), True forces zlib, False sends the body as is.
        """
        body = bytes(envelope.body)
        if len(body) > self.max_body_bytes:
            raise MessageTooLargeError("body is too large", size=len(body), limit=self.max_body_bytes, field="body")
        compression = "none"
        if compress or (compress is None and len(body) >= self.compress_min_bytes):
            packed = zlib.compress(body, self.compression_level)
            if compress or len(packed) < len(body):
                body, compression = packed, "zlib"
        fields = [
            envelope.type.value,
            envelope.message_id,
            envelope.device,
            envelope.stream,
            envelope.epoch,
            envelope.seq_first,
            envelope.seq_last,
            envelope.content_type,
            compression,
            envelope.sent_at,
            envelope.signature,
            body,
        ]
        frame = MAGIC + bytes([PROTOCOL_VERSION]) + msgpack.packb(fields, use_bin_type=True)
        frame += _CRC.pack(zlib.crc32(frame))
        if len(frame) > self.max_message_bytes:
            raise MessageTooLargeError(
                f"{envelope.type.value} message is too large; split it (see encode_feature_batches) or raise "
                "Codec.max_message_bytes",
                size=len(frame),
                limit=self.max_message_bytes,
            )
        return frame

    # --- decoding ---------------------------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview) -> Envelope:
        """Parse wire bytes into an Envelope; raise :class:`DecodeError` (and nothing else) if they are not one."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}", reason="malformed")
        data = bytes(data)
        if len(data) > self.max_message_bytes:
            raise DecodeError(f"{len(data)} bytes exceeds the limit of {self.max_message_bytes}", reason="oversized")
        if len(data) < _MIN_FRAME:
            raise DecodeError(f"only {len(data)} bytes; a frame has at least {_MIN_FRAME}", reason="truncated")
        if data[: len(MAGIC)] != MAGIC:
            raise DecodeError(f"starts with {data[:3]!r}, not {MAGIC!r}", reason="magic")
        version = data[len(MAGIC)]
        if version != PROTOCOL_VERSION:
            raise DecodeError(
                f"protocol version {version} is not supported (this decoder speaks {PROTOCOL_VERSION})",
                reason="version",
            )
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[: -_CRC.size]) != crc:
            raise DecodeError("CRC-32 does not match: the message was truncated or corrupted", reason="checksum")
        fields = _unpack(data[_HEAD : -_CRC.size], self.max_message_bytes)
        if not isinstance(fields, list) or len(fields) < _N_FIELDS:
            raise DecodeError(f"the header must be an array of at least {_N_FIELDS} fields", reason="malformed")
        (mtype, mid, device, stream, epoch, first, last, ctype, compression, sent_at, sig, body) = fields[:_N_FIELDS]
        if type(mtype) is not str or mtype not in _TYPES:
            raise DecodeError(f"unknown message type {mtype!r}", reason="type", field="type")
        _expect(mid, bytes, "message_id")
        for name, value in (("device", device), ("stream", stream), ("content_type", ctype)):
            _expect(value, str, name)
        for name, value in (("epoch", epoch), ("seq_first", first), ("seq_last", last), ("sent_at", sent_at)):
            _expect(value, int, name)
        if sig is not None:
            _expect(sig, bytes, "signature")
        _expect(body, bytes, "body")
        if compression == "zlib":
            body = self._inflate(body)
        elif compression != "none":
            raise DecodeError(f"unknown compression {compression!r}", reason="compression", field="compression")
        elif len(body) > self.max_body_bytes:
            raise DecodeError(f"body of {len(body)} bytes exceeds the limit", reason="oversized", field="body")
        try:
            return Envelope(
                type=_TYPES[mtype],
                device=device,
                body=body,
                stream=stream,
                epoch=epoch,
                seq_first=first,
                seq_last=last,
                content_type=ctype,
                message_id=mid,
                sent_at=sent_at,
                signature=sig,
                compression=compression,
            )
        except EncodeError as exc:
            raise DecodeError(str(exc), reason="field", field=exc.field) from None

    def _inflate(self, body: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(body, self.max_body_bytes + 1)
        except zlib.error as exc:
            raise DecodeError(f"zlib: {exc}", reason="compression", field="body") from None
        if len(out) > self.max_body_bytes or inflater.unconsumed_tail:
            raise DecodeError(
                f"body inflates beyond the limit of {self.max_body_bytes} bytes", reason="bomb", field="body"
            )
        if not inflater.eof or inflater.unused_data:
            raise DecodeError("compressed body is truncated or has trailing data", reason="compression", field="body")
        return out

    def with_limits(self, **changes: Any) -> Codec:
        """A copy of this codec with some limits changed."""
        return replace(self, **changes)


def _expect(value: object, kind: type, name: str) -> None:
    # type() rather than isinstance(): msgpack gives exact types, and bool must not pass as int.
    if type(value) is not kind:
        raise DecodeError(f"expected {kind.__name__}, got {type(value).__name__}", reason="field", field=name)


def _unpack(data: bytes, limit: int, reason: str = "malformed") -> Any:
    """msgpack-unpack untrusted bytes with container limits; every failure becomes a DecodeError."""
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError, TypeError, its own exceptions, UnicodeDecodeError...
        raise DecodeError(f"{type(exc).__name__}: {exc}", reason=reason) from None


def unpack_body(data: bytes, limit: int) -> Any:
    """msgpack-unpack a message body (untrusted) into plain Python objects, or raise DecodeError."""
    return _unpack(data, limit, "body")
