"""The agent's MQTT connection: paho-mqtt 2.x on its own network thread, callbacks that only enqueue.

MQTT 5 with a persistent session (``clean_start=False``, SessionExpiryInterval > 0) and a retained last will;
falls back to MQTT 3.1.1 (``clean_session=False``) when the broker refuses the protocol version — with a CONNACK
code, or (some 3.1.1-only brokers) by closing the connection or never answering the MQTT 5 CONNECT. paho's own
reconnect loop runs with a delay this module re-draws after every failure: exponential, capped, with jitter, so
a fleet that lost its broker does not come back in lockstep.
"""

from __future__ import annotations

import enum
import logging
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_sync._errors import ConfigError

from ._credentials import Credentials

log = logging.getLogger(__name__)

#: How long the broker keeps the device's session (subscriptions and queued QoS-1 messages) while it is away.
SESSION_EXPIRY_S = 7 * 24 * 3600
#: CONNACK codes meaning "this broker does not speak MQTT 5" (3.1.1's code 1, MQTT 5's 0x84).
_PROTOCOL_REFUSED = (1, 132)


class ConnectionState(str, enum.Enum):
    """Where the agent's broker connection stands (``DeviceAgent.status()["connection"]``)."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # lost or refused; paho retries with backoff


@dataclass(frozen=True)
class BrokerAddress:
    """A parsed broker URL: ``mqtt://host:port``, ``mqtts://host:port`` or ``unix:///path``."""

    transport: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``url``; :class:`~cloud_sync.ConfigError` (key ``sync.broker``) when it is not usable."""
        expected = "mqtt://host:port, mqtts://host:port or unix:///path/to/socket"
        parts = urlsplit(url)
        if parts.scheme == "unix":
            path = parts.path or parts.netloc
            if not path:
                raise ConfigError("no socket path", key="sync.broker", expected=expected, got=url)
            return cls("unix", path, 1883, False)  # paho wants a positive port even for a socket
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError("unsupported broker URL", key="sync.broker", expected=expected, got=url)
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"bad port ({exc})", key="sync.broker", expected=expected, got=url) from exc
        return cls("tcp", parts.hostname, port, tls)


Event = tuple[Any, ...]


def _name(protocol: int) -> str:
    return "5" if protocol == mqtt.MQTTv5 else "3.1.1"


class Link:
    """One device's broker connection. Every callback puts an event on ``events`` and returns at once:

    ``("connected", session_present)``, ``("refused", reason)``, ``("disconnected", reason)``,
    ``("message", topic, payload)``.
    """

    def __init__(
        self,
        address: BrokerAddress,
        credentials: Credentials | None,
        *,
        client_id: str,
        subscriptions: list[str],
        will: tuple[str, bytes],
        events: queue.Queue[Event],
        keepalive_s: int = 60,
        reconnect: tuple[float, float] = (1.0, 120.0),
    ) -> None:
        self.address = address
        self.credentials = credentials
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.will = will
        self.events = events
        self.keepalive_s = keepalive_s
        self.reconnect_min, self.reconnect_max = reconnect
        self.protocol = mqtt.MQTTv5
        self.state = ConnectionState.STOPPED
        self.last_error: str | None = None
        self._attempt = 0
        #: monotonic time the socket opened while no CONNACK has come yet (None otherwise)
        self.awaiting_connack_since: float | None = None
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    # --- lifecycle (called from the agent's threads, never from callbacks) -------------------------------------

    def start(self) -> None:
        """Build the client and start connecting in the background (returns at once, broker up or not)."""
        with self._lock:
            self._client = self._build()
            self.state = ConnectionState.CONNECTING
            kwargs: dict[str, Any] = {}
            if self.protocol == mqtt.MQTTv5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                kwargs = {"clean_start": False, "properties": props}
            self._client.connect_async(self.address.host, self.address.port, keepalive=self.keepalive_s, **kwargs)
            self._client.loop_start()

    def stop(self, final: tuple[str, bytes] | None = None) -> None:
        """Publish ``final`` (topic, payload; retained) if connected, disconnect and stop the network thread."""
        with self._lock:
            client, self._client = self._client, None
            self.state = ConnectionState.STOPPED
        if client is None:
            return
        try:
            if final is not None and client.is_connected():
                client.publish(final[0], final[1], qos=1, retain=True).wait_for_publish(2.0)
        except (RuntimeError, ValueError, OSError) as exc:
            log.warning("could not publish the final status: %s", exc)
        client.disconnect()
        client.loop_stop()

    def switch_protocol(self) -> None:
        """Reconnect speaking the other protocol version (MQTT 5 → 3.1.1, or back when 3.1.1 fared no better)."""
        new = mqtt.MQTTv311 if self.protocol == mqtt.MQTTv5 else mqtt.MQTTv5
        log.warning("broker did not accept MQTT %s; trying MQTT %s", _name(self.protocol), _name(new))
        self.stop()
        self.protocol = new
        self.awaiting_connack_since = None
        self.start()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Queue a QoS-1 publish; False when not connected (the caller retries later, nothing is lost)."""
        client = self._client
        if client is None or not client.is_connected():
            return False
        info = client.publish(topic, payload, qos=1, retain=retain)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    @property
    def connected(self) -> bool:
        """True while a session is up."""
        client = self._client
        return client is not None and client.is_connected()

    # --- internals --------------------------------------------------------------------------------------------

    def _build(self) -> mqtt.Client:
        kwargs: dict[str, Any] = {}
        if self.protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=self.protocol,
            transport=self.address.transport,  # type: ignore[arg-type]
            **kwargs,
        )
        if self.credentials is not None:
            client.username_pw_set(self.credentials.username, self.credentials.password)
        if self.address.tls:
            ca = self.credentials.ca_file if self.credentials else None
            client.tls_set(ca_certs=str(ca) if isinstance(ca, Path) else None)
        client.will_set(self.will[0], self.will[1], qos=1, retain=True)
        # paho queues publishes made while offline only up to this; we re-send from our own state anyway.
        client.max_queued_messages_set(1000)
        self._draw_delay(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        return client

    def _draw_delay(self, client: mqtt.Client) -> None:
        # Equal jitter: half the exponential step fixed, half random; capped at reconnect_max.
        step = min(self.reconnect_max, self.reconnect_min * (2 ** min(self._attempt, 30)))
        delay = step / 2 + random.uniform(0, step / 2)
        client.reconnect_delay_set(delay, delay)  # paho accepts floats

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.awaiting_connack_since = time.monotonic()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.awaiting_connack_since = None
        if reason_code.is_failure:
            self._attempt += 1
            self._draw_delay(client)
            self.state = ConnectionState.DISCONNECTED
            self.last_error = f"connection refused: {reason_code}"
            self.events.put(("refused", int(reason_code.value), str(reason_code)))
            return
        self._attempt = 0
        self._draw_delay(client)
        self.state = ConnectionState.CONNECTED
        # Non-blocking: paho only queues the SUBSCRIBE packets. Re-subscribing on a resumed session is harmless.
        client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.events.put(("connected", bool(getattr(flags, "session_present", False))))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._attempt += 1
        self._draw_delay(client)
        if self.state is not ConnectionState.STOPPED:
            self.state = ConnectionState.DISCONNECTED
        before_connack = self.awaiting_connack_since is not None
        self.awaiting_connack_since = None
        self.events.put(("disconnected", str(reason_code), before_connack))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempt += 1
        self._draw_delay(client)
        if self.state is not ConnectionState.STOPPED:
            self.state = ConnectionState.DISCONNECTED
        self.last_error = "cannot reach the broker"

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.events.put(("message", message.topic, bytes(message.payload)))
