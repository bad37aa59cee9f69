"""cloud_sync: keeps devices' feature caches and models in sync with the cloud over MQTT.

Subpackages: :mod:`cloud_sync.protocol` (topics, envelope, codecs, message types) and :mod:`cloud_sync.broker`
(mosquitto for tests and the demo, amqtt as an embedded fallback). Importing ``cloud_sync`` itself loads only
the exception classes.
"""

from __future__ import annotations

from ._errors import (
    AgentLockedError,
    BrokerError,
    BrokerNotInstalledError,
    CloudSyncError,
    ConfigError,
    DecodeError,
    EncodeError,
    InvalidTopicError,
    MessageTooLargeError,
    ProtocolError,
    PublisherError,
    ReleaseError,
    SourceError,
)

__all__ = [
    "AgentLockedError",
    "BrokerError",
    "BrokerNotInstalledError",
    "CloudSyncError",
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "InvalidTopicError",
    "MessageTooLargeError",
    "ProtocolError",
    "PublisherError",
    "ReleaseError",
    "SourceError",
]
