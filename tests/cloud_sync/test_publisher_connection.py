"""The publisher's MQTT connection: starts offline, says why it cannot connect, backs off with capped jitter."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import PublisherError
from cloud_sync.publisher import CloudConfig, CloudPublisher
from cloud_sync.publisher._client import CloudConnection


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_backoff_is_jittered_exponential_and_capped() -> None:
    conn = CloudConnection(CloudConfig(broker_url="mqtt://127.0.0.1:1", reconnect_min_s=0.1, reconnect_max_s=1.6))
    delays = []
    for _ in range(12):
        conn._set_backoff()
        delays.append(conn.next_delay)
    assert all(0.1 <= d <= 1.6 for d in delays)
    assert max(delays[6:]) > 0.4  # it grows ...
    assert len(set(delays)) > 6  # ... with jitter, so a fleet of workers does not reconnect in lockstep


def test_a_link_dropped_right_after_connack_keeps_backing_off() -> None:
    conn = CloudConnection(CloudConfig(broker_url="mqtt://127.0.0.1:1", reconnect_min_s=0.1, reconnect_max_s=10))
    before = conn._attempt
    for _ in range(6):  # connect, kicked at once (e.g. a duplicate client id), again and again
        conn._connected_at = 1e12  # "just now" (monotonic time is far below this)
        conn._on_disconnect(conn._client, None, None, None, None)
    assert conn._attempt == before + 6  # not reset by the short-lived connections
    conn._connected_at = 0.0  # a connection that lasted long: the backoff starts over
    conn._on_disconnect(conn._client, None, None, None, None)
    assert conn._attempt == 1 and conn.next_delay == 0.1


def test_starts_offline_and_reports_the_broker_it_cannot_reach(tmp_path: Path) -> None:
    config = CloudConfig(
        broker_url=f"mqtt://127.0.0.1:{closed_port()}", password="x", db_path=tmp_path / "c.db", reconnect_min_s=0.05
    )
    cloud = CloudPublisher(config, connect_timeout=0.5)
    with pytest.raises(PublisherError, match=r"could not connect to the broker at mqtt://127\.0\.0\.1:\d+ in 0\.5 s"):
        cloud.start()
    offline = CloudPublisher(config).start(wait=False)  # a worker may start before the broker
    try:
        assert not offline.connection.connected
        assert offline.fleet_status() == []  # the database side works meanwhile
    finally:
        offline.stop()


def test_a_database_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    config = CloudConfig(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "not-a-dir" / "cloud.db")
    with pytest.raises(PublisherError, match="cannot open the publisher database"):
        CloudPublisher(config).start(wait=False)
    (tmp_path / "garbage.db").write_bytes(b"this is not SQLite" * 100)
    config = CloudConfig(broker_url="mqtt://127.0.0.1:1", db_path=tmp_path / "garbage.db")
    with pytest.raises(PublisherError, match=r"garbage\.db: cannot open the publisher database"):
        CloudPublisher(config).start(wait=False)


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", ["tls", "unix"])
def test_publishes_over_tls_and_unix_sockets(
    start_broker: Any, mqtt_client: Any, tmp_path: Path, transport: str
) -> None:
    from _publisher_support import RawDevice, start_cloud

    broker = start_broker(tls=True) if transport == "tls" else start_broker(unix_socket=True)
    assert broker.url.startswith("mqtts://" if transport == "tls" else "unix://")
    device = RawDevice(mqtt_client, broker, "dev-a")
    cloud = start_cloud(broker, tmp_path)
    try:
        cloud.publish_features("v", [{"k": 1, "d": "dev-a"}], join_keys=["k"], route="d", timestamp_column=None)
        [(topic, _, batch)] = device.drain()
        assert topic == "edge/dev/dev-a/down/features/v" and batch.to_columns()["k"].tolist() == [1]
    finally:
        cloud.stop()
