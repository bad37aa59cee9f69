"""The agent's broker connection: TLS, Unix sockets, the MQTT 3.1.1 fallback, URL parsing and the jittered,
capped reconnect backoff."""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from _agent_support import RawCloud, define_store, make_device, rows_batch, score_of, sync_settings, wait_until

from cloud_sync.agent import BrokerAddress, ConnectionState, Credentials, DeviceAgent
from cloud_sync.agent._link import Link
from cloud_sync.protocol import Ack, Hello
from edge_runtime import ConfigError, ModelStore

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("options", [{"tls": True}, {"unix_socket": True}], ids=["tls", "unix-socket"])
def test_agent_syncs_over_tls_and_unix_sockets(
    options: dict[str, Any], tmp_path: Path, start_broker: Callable[..., Any]
) -> None:
    broker = start_broker(**options)
    cloud = RawCloud(broker)
    creds = tmp_path / "creds.toml"
    ca = f'ca_file = "{broker.ca_file}"\n' if broker.ca_file else ""
    creds.write_text(f'username = "dev-a"\npassword = "{broker.password("dev-a")}"\n{ca}')
    creds.chmod(0o600)
    store = define_store(tmp_path / "f.db")
    models = ModelStore(tmp_path / "m")
    agent = DeviceAgent(
        sync_settings(broker, credentials_file=creds), features=store, models=models, data_dir=tmp_path / "s"
    )
    assert agent.address.tls == bool(options.get("tls")) and agent.address.transport == broker.transport
    agent.start()
    try:
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
        cloud.send_batch("dev-a", rows_batch([1], kind="snapshot"), epoch=1, first_seq=1)
        cloud.wait_for(lambda t, e, m: isinstance(m, Ack))
        assert score_of(store, 1) == 2.0
    finally:
        agent.stop()
        cloud.close()
        store.close()
        models.close()


def test_tls_with_an_untrusted_ca_never_connects(tmp_path: Path, start_broker: Callable[..., Any]) -> None:
    broker = start_broker(tls=True)
    dev = make_device(tmp_path, broker)  # no ca_file: the broker's generated CA is not a system CA
    try:
        wait_until(lambda: dev.agent.status()["connection"] == "disconnected", what="failed handshake")
        assert dev.agent.status()["connects"] == 0
    finally:
        dev.close()


def test_falls_back_to_mqtt_311_for_a_broker_without_mqtt_5(tmp_path: Path) -> None:
    from cloud_sync.broker import EmbeddedBroker

    try:
        broker = EmbeddedBroker()
    except Exception as exc:  # amqtt missing: the optional extra is not installed
        pytest.skip(str(exc))
    with broker:
        store = define_store(tmp_path / "f.db")
        models = ModelStore(tmp_path / "m")
        settings = sync_settings(broker)
        agent = DeviceAgent(settings, features=store, models=models, data_dir=tmp_path / "s").start()
        try:
            wait_until(lambda: agent.status()["connection"] == "connected", timeout=20, what="3.1.1 connection")
            assert agent.status()["protocol"] == "3.1.1"
        finally:
            agent.stop()
            store.close()
            models.close()


def test_broker_urls_are_parsed_or_refused() -> None:
    assert BrokerAddress.parse("mqtt://h:1884") == BrokerAddress("tcp", "h", 1884, False)
    assert BrokerAddress.parse("mqtts://h") == BrokerAddress("tcp", "h", 8883, True)
    assert BrokerAddress.parse("unix:///run/mq.sock") == BrokerAddress("unix", "/run/mq.sock", 1883, False)
    for bad in ("http://h", "mqtt://", "mqtt://h:notaport", "unix://"):
        with pytest.raises(ConfigError, match=r"sync\.broker"):
            BrokerAddress.parse(bad)


def test_reconnect_delay_is_exponential_capped_and_jittered() -> None:
    link = Link(
        BrokerAddress.parse("mqtt://127.0.0.1:1"),
        Credentials("dev-a", "x"),
        client_id="dev-a",
        subscriptions=[],
        will=("edge/dev/dev-a/up/status", b"x"),
        events=queue.Queue(),
        reconnect=(1.0, 8.0),
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    seen: dict[int, list[float]] = {}
    for attempt in (0, 1, 2, 3, 10):
        link._attempt = attempt
        for _ in range(50):
            link._draw_delay(client)
            seen.setdefault(attempt, []).append(client._reconnect_min_delay)
    for attempt, delays in seen.items():
        step = min(8.0, 2.0**attempt)
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 10  # jittered, not lockstep
    assert link.state is ConnectionState.STOPPED


def test_sync_config_errors_are_cloud_sync_errors_too(tmp_path: Path) -> None:
    """An app catching CloudSyncError used to miss edge_runtime.ConfigError raised by the agent's parsers."""
    import edge_runtime
    from cloud_sync import CloudSyncError, ConfigError
    from cloud_sync.agent import BrokerAddress, load_credentials

    with pytest.raises(CloudSyncError) as exc:
        BrokerAddress.parse("http://nope")
    assert isinstance(exc.value, ConfigError) and isinstance(exc.value, edge_runtime.ConfigError)
    assert exc.value.key == "sync.broker"
    bad = tmp_path / "creds.toml"
    bad.write_text('username = "dev-a"\n')
    with pytest.raises(CloudSyncError) as exc:
        load_credentials(bad)
    assert isinstance(exc.value, ConfigError) and exc.value.key == "password" and exc.value.file == str(bad)
