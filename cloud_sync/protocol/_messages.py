"""The typed bodies of the feature, status and telemetry messages (model messages: _model_messages.py).

Each body is a frozen dataclass with ``encode_body() -> bytes`` and ``decode_body(bytes) -> instance``; bodies are
msgpack maps with short string keys so a newer sender can add keys an older receiver ignores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from cloud_sync._errors import EncodeError

from ._envelope import PROTOCOL_VERSION, unpack_body
from ._fields import Fields
from ._topics import NAME_RE
from ._types import MessageType

CATCHUP_REASONS = ("gap", "new_epoch", "no_state")
ACK_STATUSES = ("applied", "duplicate", "rejected")
STATUS_STATES = ("online", "offline")
_Scalar = int | float | str | bool | None


def pack_body(body: dict[str, Any]) -> bytes:
    """msgpack a body map (bytes as bin, str as str)."""
    return msgpack.packb(body, use_bin_type=True)


def read_name(f: Fields, key: str) -> str:
    """Read a stream or model name from a body; DecodeError when it is not one."""
    value = f.get_str(key, max_len=128)
    if not NAME_RE.match(value):
        raise f.fail(key, f"{value!r:.80} is not a valid stream or model name")
    return value


def check_name(value: str, what: str) -> None:
    """Refuse (EncodeError) a stream or model name that could not be decoded back."""
    if not isinstance(value, str) or len(value) > 128 or not NAME_RE.match(value):
        raise EncodeError(f"{value!r} is not a valid name", field=what)


def read_name_int_map(f: Fields, key: str) -> dict[str, int]:
    """Read a ``{name: non-negative int}`` map (model versions) from a body."""
    raw = f.get_map(key, default={})
    out = {}
    for k, v in raw.items():
        if type(k) is not str or not NAME_RE.match(k) or type(v) is not int or not 0 <= v < 2**63:
            raise f.fail(key, "must map names to non-negative ints")
        out[k] = v
    return out


@dataclass(frozen=True)
class CatchUpRequest:
    """device → cloud: resend stream ``stream`` from after ``(epoch, applied_seq)``.

    ``reason``: ``gap`` (a batch arrived beyond applied_seq + 1), ``new_epoch`` (a batch of an epoch the device
    has no snapshot of) or ``no_state`` (the device has nothing for the stream). ``seen_epoch``/``seen_seq`` are
    the batch that revealed it (0 when none).
    """

    TYPE: ClassVar[MessageType] = MessageType.FEATURE_CATCHUP

    stream: str
    epoch: int
    applied_seq: int
    reason: str
    seen_epoch: int = 0
    seen_seq: int = 0

    def encode_body(self) -> bytes:
        """The msgpack body."""
        check_name(self.stream, "stream")
        if self.reason not in CATCHUP_REASONS:
            raise EncodeError(f"must be one of {', '.join(CATCHUP_REASONS)}", field="reason")
        return pack_body(
            {
                "stream": self.stream,
                "epoch": self.epoch,
                "applied": self.applied_seq,
                "reason": self.reason,
                "seen_epoch": self.seen_epoch,
                "seen_seq": self.seen_seq,
            }
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> CatchUpRequest:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        return cls(
            read_name(f, "stream"),
            f.get_int("epoch"),
            f.get_int("applied"),
            f.get_str("reason", choices=CATCHUP_REASONS),
            f.get_int("seen_epoch", default=0),
            f.get_int("seen_seq", default=0),
        )


@dataclass(frozen=True)
class Hello:
    """device → cloud on every (re)connect: what the device has, so the cloud can send only what is missing.

    ``watermarks`` maps each stream to ``(epoch, applied_seq)``; ``models`` maps each model to its active version.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO

    agent_version: str
    watermarks: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    models: Mapping[str, int] = field(default_factory=dict)
    protocol_version: int = PROTOCOL_VERSION
    capabilities: tuple[str, ...] = ()

    def encode_body(self) -> bytes:
        """The msgpack body."""
        for name in (*self.watermarks, *self.models):
            check_name(name, "watermarks/models")
        return pack_body(
            {
                "agent": self.agent_version,
                "protocol": self.protocol_version,
                "wm": {k: [int(e), int(s)] for k, (e, s) in self.watermarks.items()},
                "models": dict(self.models),
                "caps": list(self.capabilities),
            }
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> Hello:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        wm: dict[str, tuple[int, int]] = {}
        for k, v in f.get_map("wm", default={}).items():
            ok = type(k) is str and NAME_RE.match(k) and type(v) is list and len(v) == 2
            if not ok or not all(type(x) is int and 0 <= x < 2**63 for x in v):
                raise f.fail("wm", "must map stream names to [epoch, applied_seq]")
            wm[k] = (v[0], v[1])
        caps = f.get_list("caps", max_len=64, default=[])
        if not all(type(c) is str and len(c) <= 64 for c in caps):
            raise f.fail("caps", "must be an array of short strings")
        return cls(
            f.get_str("agent", max_len=128),
            wm,
            read_name_int_map(f, "models"),
            f.get_int("protocol", high=65535, default=PROTOCOL_VERSION),
            tuple(caps),
        )


@dataclass(frozen=True)
class Ack:
    """device → cloud: the feature batch ``acked_id`` of ``stream`` was committed (or was a duplicate/rejected).

    ``epoch``/``applied_seq`` are the device's watermark after handling it.
    """

    TYPE: ClassVar[MessageType] = MessageType.ACK

    acked_id: bytes
    stream: str
    epoch: int
    applied_seq: int
    status: str = "applied"
    detail: str = ""

    def encode_body(self) -> bytes:
        """The msgpack body."""
        if self.status not in ACK_STATUSES:
            raise EncodeError(f"must be one of {', '.join(ACK_STATUSES)}", field="status")
        return pack_body(
            {
                "id": self.acked_id,
                "stream": self.stream,
                "epoch": self.epoch,
                "applied": self.applied_seq,
                "status": self.status,
                "detail": self.detail,
            }
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> Ack:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        return cls(
            f.get_bytes("id", length=16),
            read_name(f, "stream"),
            f.get_int("epoch"),
            f.get_int("applied"),
            f.get_str("status", choices=ACK_STATUSES),
            f.get_str("detail", max_len=4096, default=""),
        )


@dataclass(frozen=True)
class Status:
    """device → cloud (retained; the last will carries ``state="offline"``): liveness and reported state."""

    TYPE: ClassVar[MessageType] = MessageType.STATUS

    state: str
    agent_version: str = ""
    models: Mapping[str, int] = field(default_factory=dict)
    detail: str = ""

    def encode_body(self) -> bytes:
        """The msgpack body."""
        if self.state not in STATUS_STATES:
            raise EncodeError(f"must be one of {', '.join(STATUS_STATES)}", field="state")
        return pack_body(
            {"state": self.state, "agent": self.agent_version, "models": dict(self.models), "detail": self.detail}
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> Status:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        return cls(
            f.get_str("state", choices=STATUS_STATES),
            f.get_str("agent", max_len=128, default=""),
            read_name_int_map(f, "models"),
            f.get_str("detail", max_len=4096, default=""),
        )


@dataclass(frozen=True)
class TelemetryRecord:
    """One aggregate telemetry record: ``id`` (16 bytes, the dedup key), ``kind``, time ``at`` (epoch µs) and
    ``values`` (name → number, string, bool or None; aggregates only, never raw features or entity ids)."""

    id: bytes
    kind: str
    at: int
    values: Mapping[str, _Scalar]


@dataclass(frozen=True)
class TelemetryBatch:
    """device → cloud: records from the device's outbox (at-least-once; the cloud dedups by record id)."""

    TYPE: ClassVar[MessageType] = MessageType.TELEMETRY_BATCH

    records: tuple[TelemetryRecord, ...]

    def encode_body(self) -> bytes:
        """The msgpack body."""
        return pack_body({"records": [[r.id, r.kind, r.at, dict(r.values)] for r in self.records]})

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> TelemetryBatch:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        records = []
        for item in f.get_list("records"):
            if type(item) is not list or len(item) < 4:
                raise f.fail("records", "each record must be [id, kind, at, values]")
            rid, kind, at, values = item[:4]
            ok = type(rid) is bytes and len(rid) == 16 and type(kind) is str and len(kind) <= 128
            ok = ok and type(at) is int and 0 <= at < 2**63 and type(values) is dict
            if not ok or not all(
                type(k) is str and type(v) in (int, float, str, bool, type(None)) for k, v in values.items()
            ):
                raise f.fail("records", "each record must be [16-byte id, kind, epoch µs, {name: scalar}]")
            records.append(TelemetryRecord(rid, kind, at, values))
        return cls(tuple(records))


@dataclass(frozen=True)
class TelemetryAck:
    """cloud → device: the records ``ids`` are stored; the device may drop them from its outbox."""

    TYPE: ClassVar[MessageType] = MessageType.TELEMETRY_ACK

    ids: tuple[bytes, ...]

    def encode_body(self) -> bytes:
        """The msgpack body."""
        return pack_body({"ids": b"".join(self.ids)})

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> TelemetryAck:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        raw = f.get_bytes("ids")
        if len(raw) % 16:
            raise f.fail("ids", "must be a concatenation of 16-byte ids")
        return cls(tuple(raw[i : i + 16] for i in range(0, len(raw), 16)))
