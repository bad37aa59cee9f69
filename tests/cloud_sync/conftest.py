"""Fixtures for cloud_sync tests: a real mosquitto per test and paho-mqtt 2.x clients that record deliveries.

``mosquitto`` yields a running broker (devices ``dev-a`` and ``dev-b``, prefix ``edge``) on a free port;
``start_broker(**overrides)`` starts more with any :class:`~cloud_sync.broker.BrokerConfig` field changed;
``mqtt_client(broker, username, ...)`` connects a recording paho client. Everything is stopped at teardown.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_sync import BrokerNotInstalledError
from cloud_sync.broker import Mosquitto, find_mosquitto

TIMEOUT = 5.0


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    """Path of the mosquitto executable; skips the test (saying how to install it) when there is none."""
    try:
        return str(find_mosquitto())
    except BrokerNotInstalledError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def start_broker(mosquitto_binary: str) -> Iterator[Callable[..., Mosquitto]]:
    """Factory: ``start_broker(**BrokerConfig overrides)`` → a started Mosquitto, closed after the test."""
    started: list[Mosquitto] = []

    def start(**overrides: Any) -> Mosquitto:
        overrides.setdefault("devices", ("dev-a", "dev-b"))
        broker = Mosquitto(binary=mosquitto_binary, **overrides)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.close()


@pytest.fixture
def mosquitto(start_broker: Callable[..., Mosquitto]) -> Mosquitto:
    """A running mosquitto with devices dev-a and dev-b under the prefix ``edge``."""
    return start_broker()


class RecordingClient:
    """A paho 2.x client on its own network thread that queues every message it receives."""

    def __init__(
        self,
        broker: Any,
        username: str | None,
        *,
        client_id: str | None = None,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        clean: bool = True,
        session_expiry: int = 0,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.client_id = client_id or f"{username}-{uuid.uuid4().hex[:8]}"
        kwargs: dict[str, Any] = {}
        if protocol != mqtt.MQTTv5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport=getattr(broker, "transport", "tcp"),
            **kwargs,
        )
        self.protocol = protocol
        if username is not None:
            if password is not None:
                self.client.username_pw_set(username, password)
            else:
                broker.configure_client(self.client, username)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=tls_ca)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack = threading.Event()
        self.reason_code: Any = None
        self.connack_properties: Any = None
        self._subacks: dict[int, list[Any]] = {}
        self._subacked = threading.Condition()
        # A refused client retries; short delays keep its teardown fast (paho accepts floats at runtime).
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, msg: self.messages.put(msg)
        self.client.on_subscribe = self._on_subscribe
        self._broker = broker
        self._clean = clean
        self._session_expiry = session_expiry

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.reason_code = reason_code
        self.connack_properties = properties
        self.connack.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._subacked:
            self._subacks[mid] = list(reason_codes)
            self._subacked.notify_all()

    def connect(self) -> RecordingClient:
        """Connect and start the network thread; returns once CONNACK arrived (check ``connected``)."""
        self.connack.clear()
        kwargs: dict[str, Any] = {}
        if self.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if self._session_expiry:
                props.SessionExpiryInterval = self._session_expiry
            kwargs = {"clean_start": self._clean, "properties": props}
        # paho checks port > 0 even for a Unix socket, where it is ignored.
        self.client.connect(self._broker.host, self._broker.port or 1883, keepalive=30, **kwargs)
        self.client.loop_start()
        assert self.connack.wait(TIMEOUT), "no CONNACK"
        return self

    @property
    def connected(self) -> bool:
        """True when the last CONNACK accepted the connection."""
        return self.reason_code is not None and not self.reason_code.is_failure

    def subscribe(self, topic: str, qos: int = 1) -> list[Any]:
        """Subscribe and wait for SUBACK; returns its reason codes."""
        result, mid = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        assert mid is not None
        with self._subacked:
            assert self._subacked.wait_for(lambda: mid in self._subacks, TIMEOUT), "no SUBACK"
            return self._subacks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Publish and wait until the broker acknowledged it (QoS 1) or it was sent (QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        return info

    def receive(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage | None:
        """The next delivered message, or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, quiet: float = 0.3, first: float = TIMEOUT) -> list[mqtt.MQTTMessage]:
        """Every message that arrives until none came for ``quiet`` seconds (the first may take ``first``).

        The long wait for the first message keeps tests that expect something robust on a loaded machine; the
        quiet window then bounds how long a message that should *not* come is waited for.
        """
        msg = self.receive(first)
        out = []
        while msg is not None:
            out.append(msg)
            msg = self.receive(quiet)
        return out

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_client() -> Iterator[Callable[..., RecordingClient]]:
    """Factory: ``mqtt_client(broker, username, **options)`` → a connected RecordingClient, closed at teardown."""
    clients: list[RecordingClient] = []

    def make(broker: Any, username: str | None, *, connect: bool = True, **options: Any) -> RecordingClient:
        client = RecordingClient(broker, username, **options)
        clients.append(client)
        return client.connect() if connect else client

    yield make
    for client in clients:
        client.close()
