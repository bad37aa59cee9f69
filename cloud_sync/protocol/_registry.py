"""The registry of message body classes, and wrapping, reading and route-checking messages."""

from __future__ import annotations

from typing import Any

from cloud_sync._errors import DecodeError

from ._envelope import MSGPACK, Codec, Envelope
from ._features import FeatureBatch
from ._messages import Ack, CatchUpRequest, Hello, Status, TelemetryAck, TelemetryBatch
from ._model_messages import InstallReport, ModelChunk, ModelChunkRequest, ModelManifestMessage
from ._topics import BROADCAST_DEVICE, TopicInfo
from ._types import MessageType

Message = (
    FeatureBatch
    | CatchUpRequest
    | Hello
    | Ack
    | ModelManifestMessage
    | ModelChunkRequest
    | ModelChunk
    | InstallReport
    | Status
    | TelemetryBatch
    | TelemetryAck
)

#: The body class of each message type.
BODY_TYPES: dict[MessageType, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        FeatureBatch,
        CatchUpRequest,
        Hello,
        Ack,
        ModelManifestMessage,
        ModelChunkRequest,
        ModelChunk,
        InstallReport,
        Status,
        TelemetryBatch,
        TelemetryAck,
    )
}


def to_envelope(
    message: Message, *, device: str, stream: str = "", epoch: int = 0, seq: tuple[int, int] = (0, 0), **extra: Any
) -> Envelope:
    """Wrap a message body in an envelope (``extra``: message_id, sent_at, signature)."""
    return Envelope(
        type=message.TYPE,
        device=device,
        body=message.encode_body(),
        stream=stream,
        epoch=epoch,
        seq_first=seq[0],
        seq_last=seq[1],
        content_type=MSGPACK,
        **extra,
    )


def read_message(envelope: Envelope, *, codec: Codec | None = None) -> Message:
    """Parse the body of ``envelope`` into its typed message; DecodeError when the body is not valid."""
    if envelope.content_type != MSGPACK:
        raise DecodeError(
            f"{envelope.type.value} bodies are {MSGPACK}, not {envelope.content_type!r}",
            reason="body",
            field="content_type",
        )
    limit = (codec or Codec()).max_body_bytes
    result: Message = BODY_TYPES[envelope.type].decode_body(envelope.body, limit=limit)
    return result


def decode_message(payload: bytes, *, codec: Codec | None = None) -> tuple[Envelope, Message]:
    """Decode wire bytes into (envelope, typed body); DecodeError — and nothing else — when they are invalid."""
    codec = codec or Codec()
    envelope = codec.decode(payload)
    return envelope, read_message(envelope, codec=codec)


def check_route(info: TopicInfo, envelope: Envelope) -> None:
    """Refuse an envelope that disagrees with the topic it arrived on: DecodeError with reason ``route``.

    The topic is what the broker's ACL vouches for (a device can only publish under its own ``up/``), so the
    envelope's ``type``, ``device`` and, for feature batches, ``stream`` must match it; otherwise a device could
    claim to be another one inside the payload.
    """
    if envelope.type is not info.type:
        raise DecodeError(f"a {envelope.type.value} message on a {info.type.value} topic", reason="route", field="type")
    expected = info.device if info.device is not None else BROADCAST_DEVICE
    if envelope.device != expected:
        raise DecodeError(
            f"envelope says device {envelope.device!r}, the topic says {expected!r}", reason="route", field="device"
        )
    if info.type is MessageType.FEATURE_BATCH and envelope.stream != info.name:
        raise DecodeError(
            f"envelope says stream {envelope.stream!r}, the topic says {info.name!r}", reason="route", field="stream"
        )
