"""Brokers for tests and the demo: a real mosquitto with a generated configuration, or amqtt embedded.

:class:`Mosquitto` writes a private directory (config, password file, per-device ACL, optional TLS certificates,
persistence file, log), starts mosquitto on a free port or a Unix socket, and waits until a real MQTT login
succeeds. See docs/broker.md.
"""

from __future__ import annotations

from ._base import BrokerHandle
from ._embedded import EmbeddedBroker
from ._mosquitto import INSTALL_HINT, BrokerConfig, Mosquitto, find_mosquitto, free_port, start_mosquitto
from ._passwords import hash_password, new_password
from ._probe import mqtt_login
from ._tls import TlsFiles, generate_tls_files

__all__ = [
    "INSTALL_HINT",
    "BrokerConfig",
    "BrokerHandle",
    "EmbeddedBroker",
    "Mosquitto",
    "TlsFiles",
    "find_mosquitto",
    "free_port",
    "generate_tls_files",
    "hash_password",
    "mqtt_login",
    "new_password",
    "start_mosquitto",
]
