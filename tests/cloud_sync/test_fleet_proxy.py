"""The per-device fault proxy against a real mosquitto: cut (reset and blackhole), restore, latency."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_sync.fleet import FleetError, ProxyHub, Upstream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hub() -> Iterator[ProxyHub]:
    h = ProxyHub()
    yield h
    h.close()


class Client:
    """A paho client through a proxy, recording connects, disconnects and messages."""

    def __init__(self, broker: Any, port: int, user: str) -> None:
        self.connects = 0
        self.disconnects = 0
        self.messages: list[tuple[float, bytes]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{time.monotonic_ns()}")
        broker.configure_client(self.c, user)
        self.c.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *a: setattr(self, "disconnects", self.disconnects + 1)
        self.c.on_message = lambda c, u, m: self.messages.append((time.monotonic(), bytes(m.payload)))
        self.c.connect_async("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self.connects += 1
            client.subscribe("edge/broadcast/#", 1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _wait(cond: Any, timeout: float = 10.0) -> None:
    from cloud_sync.fleet import wait_until

    wait_until(cond, timeout)


def test_upstream_from_url_and_bad_urls() -> None:
    assert Upstream.from_url("mqtt://127.0.0.1:1884") == Upstream("127.0.0.1", 1884)
    assert Upstream.from_url("mqtts://broker") == Upstream("broker", 8883)
    assert Upstream.from_url("unix:///tmp/x.sock") == Upstream("/tmp/x.sock", 0, True)
    with pytest.raises(FleetError, match="not mqtt://"):
        Upstream.from_url("http://x")


def test_cut_reset_refuses_and_restore_reconnects(hub: ProxyHub, mosquitto: Any, mqtt_client: Any) -> None:
    proxy = hub.add("dev-a", mosquitto.url)
    dev = Client(mosquitto, proxy.port, "dev-a")
    cloud = mqtt_client(mosquitto, "cloud")
    try:
        _wait(lambda: dev.connects == 1)
        time.sleep(0.2)  # SUBACK
        cloud.publish("edge/broadcast/x", b"1")
        _wait(lambda: len(dev.messages) == 1)
        hub.cut("dev-a")
        _wait(lambda: dev.disconnects >= 1)
        assert proxy.is_cut
        # New connections are refused at once while cut: the client keeps retrying without getting through.
        _wait(lambda: proxy.refused >= 2)
        assert dev.connects == 1
        hub.restore("dev-a")
        _wait(lambda: dev.connects == 2)
        assert proxy.bytes_up > 0 and proxy.bytes_down > 0
    finally:
        dev.close()


def test_blackhole_holds_traffic_until_restore(hub: ProxyHub, mosquitto: Any, mqtt_client: Any) -> None:
    proxy = hub.add("dev-a", mosquitto.url)
    dev = Client(mosquitto, proxy.port, "dev-a")
    cloud = mqtt_client(mosquitto, "cloud")
    try:
        _wait(lambda: dev.connects == 1)
        time.sleep(0.2)
        hub.cut("dev-a", "blackhole")
        cloud.publish("edge/broadcast/x", b"held")
        time.sleep(0.5)
        assert dev.messages == [] and dev.disconnects == 0  # the socket stays open; nothing flows
        hub.restore("dev-a")
        _wait(lambda: [m for _, m in dev.messages] == [b"held"])
        assert dev.connects == 1  # the same connection carried on
    finally:
        dev.close()


def test_latency_delays_each_direction(hub: ProxyHub, mosquitto: Any, mqtt_client: Any) -> None:
    proxy = hub.add("dev-a", mosquitto.url)
    dev = Client(mosquitto, proxy.port, "dev-a")
    cloud = mqtt_client(mosquitto, "cloud")
    try:
        _wait(lambda: dev.connects == 1)
        time.sleep(0.2)
        hub.set_latency("dev-a", 0.3)
        sent = time.monotonic()
        for i in range(5):
            cloud.client.publish("edge/broadcast/x", str(i).encode(), qos=1)
        _wait(lambda: len(dev.messages) == 5)
        assert [m for _, m in dev.messages] == [b"0", b"1", b"2", b"3", b"4"]  # order kept
        # A lower bound only (the delay is the feature under test): nothing can arrive before its due time.
        assert dev.messages[0][0] - sent >= 0.3
        with pytest.raises(FleetError, match="latency"):
            hub.set_latency("dev-a", -1)
    finally:
        dev.close()


def test_broker_down_means_refused_not_hung(hub: ProxyHub) -> None:
    from cloud_sync.broker import free_port

    proxy = hub.add("dev-a", f"mqtt://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(1) == b""
    except ConnectionResetError:
        pass  # a reset is as good as EOF: the device sees the broker as unreachable, at once
    assert proxy.connections == 0


def test_unknown_device_and_bad_mode(hub: ProxyHub) -> None:
    hub.add("dev-a", "mqtt://127.0.0.1:1")
    with pytest.raises(FleetError, match=r"no proxy for device 'nope'.*dev-a"):
        hub.cut("nope")
    with pytest.raises(FleetError, match="cut mode"):
        hub.cut("dev-a", "unplug")
    with pytest.raises(FleetError, match="exists already"):
        hub.add("dev-a", "mqtt://127.0.0.1:1")
    assert hub.drop_connections("dev-a") == 0
