"""The sync protocol: topics, the message envelope and its binary encoding, and the typed message bodies.

Everything here is pure data handling (no network): the device agent and the cloud publisher both build on it.
See docs/sync-protocol.md for the wire format.
"""

from __future__ import annotations

from ._columns import DTYPES, Column
from ._envelope import MAGIC, MSGPACK, PROTOCOL_VERSION, Codec, Envelope, new_message_id
from ._features import BATCH_KINDS, FeatureBatch, Frame, encode_feature_batches
from ._messages import Ack, CatchUpRequest, Hello, Status, TelemetryAck, TelemetryBatch, TelemetryRecord
from ._model_messages import InstallReport, ModelChunk, ModelChunkRequest, ModelManifestMessage
from ._registry import BODY_TYPES, Message, check_route, decode_message, read_message, to_envelope
from ._topics import BROADCAST_DEVICE, TopicInfo, Topics, validate_device_id, validate_name
from ._types import RETAINED, ROUTES, Direction, MessageType

__all__ = [
    "BATCH_KINDS",
    "BODY_TYPES",
    "BROADCAST_DEVICE",
    "DTYPES",
    "MAGIC",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "RETAINED",
    "ROUTES",
    "Ack",
    "CatchUpRequest",
    "Codec",
    "Column",
    "Direction",
    "Envelope",
    "FeatureBatch",
    "Frame",
    "Hello",
    "InstallReport",
    "Message",
    "MessageType",
    "ModelChunk",
    "ModelChunkRequest",
    "ModelManifestMessage",
    "Status",
    "TelemetryAck",
    "TelemetryBatch",
    "TelemetryRecord",
    "TopicInfo",
    "Topics",
    "check_route",
    "decode_message",
    "encode_feature_batches",
    "new_message_id",
    "read_message",
    "to_envelope",
    "validate_device_id",
    "validate_name",
]
