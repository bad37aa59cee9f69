"""The device agent: keeps a device's feature cache and models in sync with the cloud over MQTT.

:class:`DeviceAgent` (``DeviceAgent.for_runtime(rt)``, ``start()``, ``stop()``, ``status()``); the
``cloud-sync agent --config PROFILE.toml`` command runs one in the foreground. See docs/agent.md.

Names are loaded on first use, so ``cloud-sync --help`` does not import paho-mqtt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud_sync._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._agent import AGENT_VERSION, DeviceAgent
    from ._credentials import Credentials, load_credentials
    from ._link import BrokerAddress, ConnectionState

_LAZY = {
    "AGENT_VERSION": "._agent",
    "BrokerAddress": "._link",
    "ConnectionState": "._link",
    "Credentials": "._credentials",
    "DeviceAgent": "._agent",
    "load_credentials": "._credentials",
}

__all__ = ["AGENT_VERSION", "BrokerAddress", "ConnectionState", "Credentials", "DeviceAgent", "load_credentials"]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
