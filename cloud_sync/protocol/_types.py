"""The message types of the sync protocol and where each one travels."""

from __future__ import annotations

import enum


class MessageType(str, enum.Enum):
    """The kind of a message; its value is what travels in the envelope's ``type`` field."""

    #: cloud → device: one part of a feature snapshot, or a delta (upserts and tombstones) for one stream.
    FEATURE_BATCH = "features.batch"
    #: device → cloud: "I miss batches of this stream" (a gap, or an epoch I have no snapshot for).
    FEATURE_CATCHUP = "features.catchup"
    #: device → cloud, on every (re)connect: watermarks per stream and installed model versions.
    HELLO = "hello"
    #: device → cloud: a feature batch was committed (or was a duplicate, or was rejected).
    ACK = "ack"
    #: cloud → device (retained): a signed model manifest plus the chunking of the model file.
    MODEL_MANIFEST = "model.manifest"
    #: device → cloud: send me these chunks of this model version.
    MODEL_CHUNK_REQUEST = "model.chunk_request"
    #: cloud → device: one chunk of a model file.
    MODEL_CHUNK = "model.chunk"
    #: device → cloud: the outcome of installing a model version.
    INSTALL_REPORT = "model.install_report"
    #: device → cloud (retained, also the last will): online / offline and reported state.
    STATUS = "status"
    #: device → cloud: aggregated telemetry records from the device's outbox.
    TELEMETRY_BATCH = "telemetry.batch"
    #: cloud → device: these telemetry records are stored; drop them from the outbox.
    TELEMETRY_ACK = "telemetry.ack"


class Direction(str, enum.Enum):
    """Which branch of the topic tree a message travels on."""

    BROADCAST = "broadcast"  # cloud → every device
    DOWN = "down"  # cloud → one device
    UP = "up"  # one device → cloud


#: Topic path (below ``<prefix>/dev/<device>/<direction>/`` or ``<prefix>/broadcast/``) of each message type;
#: ``{name}`` is the stream (feature view) or model name. The order of the tuple is (path, directions).
ROUTES: dict[MessageType, tuple[str, frozenset[Direction]]] = {
    MessageType.FEATURE_BATCH: ("features/{name}", frozenset({Direction.DOWN, Direction.BROADCAST})),
    MessageType.MODEL_MANIFEST: ("models/{name}/manifest", frozenset({Direction.DOWN, Direction.BROADCAST})),
    MessageType.MODEL_CHUNK: ("models/{name}/chunk", frozenset({Direction.DOWN})),
    MessageType.TELEMETRY_ACK: ("telemetry/ack", frozenset({Direction.DOWN})),
    MessageType.HELLO: ("hello", frozenset({Direction.UP})),
    MessageType.ACK: ("ack", frozenset({Direction.UP})),
    MessageType.FEATURE_CATCHUP: ("features/{name}/catchup", frozenset({Direction.UP})),
    MessageType.MODEL_CHUNK_REQUEST: ("models/{name}/chunk-request", frozenset({Direction.UP})),
    MessageType.INSTALL_REPORT: ("models/{name}/report", frozenset({Direction.UP})),
    MessageType.STATUS: ("status", frozenset({Direction.UP})),
    MessageType.TELEMETRY_BATCH: ("telemetry", frozenset({Direction.UP})),
}

#: Message types the broker should keep as retained messages (the latest one per topic).
RETAINED: frozenset[MessageType] = frozenset({MessageType.MODEL_MANIFEST, MessageType.STATUS})
