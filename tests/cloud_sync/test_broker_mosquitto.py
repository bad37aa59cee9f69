"""cloud_sync.broker.Mosquitto against the real mosquitto binary, with paho-mqtt 2.x clients."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat

import paho.mqtt.client as mqtt
import pytest

from cloud_sync import BrokerError, BrokerNotInstalledError
from cloud_sync.broker import BrokerConfig, Mosquitto, find_mosquitto, mqtt_login
from cloud_sync.broker import _mosquitto as mosquitto_module
from cloud_sync.protocol import MessageType, Topics

pytestmark = pytest.mark.mosquitto
T = Topics("edge")


def _login(broker: Mosquitto, username: str, password: str | None = None) -> int:
    return mqtt_login(
        host=broker.config.host,
        port=broker.port,
        username=username,
        password=password if password is not None else broker.password(username),
        unix_socket=broker.socket_path if broker.config.unix_socket else None,
        ca_file=broker.ca_file,
    )


def test_start_exposes_host_port_url_and_accepts_logins(mosquitto):
    assert mosquitto.running
    assert mosquitto.pid
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert set(mosquitto.credentials) == {"cloud", "dev-a", "dev-b"}
    for user in mosquitto.credentials:
        assert _login(mosquitto, user) == 0
    assert "mosquitto version" in mosquitto.log_text()


def test_stop_ends_the_process_and_close_removes_the_directory(start_broker):
    broker = start_broker()
    directory, port = broker.directory, broker.port
    broker.stop()
    assert not broker.running
    assert broker.pid is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    broker.close()
    assert not directory.exists()


def test_wrong_password_unknown_user_and_anonymous_are_refused(mosquitto, mqtt_client):
    assert _login(mosquitto, "dev-a", "not-the-password") in (4, 5)
    assert _login(mosquitto, "nobody", "whatever") in (4, 5)
    assert mqtt_login(host="127.0.0.1", port=mosquitto.port, username=None, password=None) in (4, 5)
    refused = mqtt_client(mosquitto, "dev-a", password="wrong")
    assert not refused.connected
    assert refused.reason_code.is_failure
    good = mqtt_client(mosquitto, "dev-a")
    assert good.connected


def test_device_cannot_receive_another_devices_down_messages(mosquitto, mqtt_client):
    cloud = mqtt_client(mosquitto, "cloud")
    dev_a = mqtt_client(mosquitto, "dev-a")
    dev_b = mqtt_client(mosquitto, "dev-b")
    # dev-a tries every way of reading dev-b's topics; the broker may even grant the SUBACK.
    for topic in ("edge/dev/dev-b/down/#", "edge/dev/+/down/#", "edge/#"):
        dev_a.subscribe(topic)
    for topic in T.device_subscriptions("dev-b"):
        dev_b.subscribe(topic)
    secret = T.down("dev-b", MessageType.FEATURE_BATCH, "user_stats")
    cloud.publish(secret, b"for dev-b only")
    cloud.publish(T.down("dev-a", MessageType.FEATURE_BATCH, "user_stats"), b"for dev-a")
    # dev-b gets its message (the test can fail), dev-a only its own: published after the secret by the
    # same client, so if the secret had been delivered to dev-a it would have arrived first.
    got_b = dev_b.receive()
    assert got_b is not None
    assert got_b.payload == b"for dev-b only"
    received_a = [m.payload for m in dev_a.drain()]
    assert b"for dev-a" in received_a
    assert b"for dev-b only" not in received_a


def test_device_cannot_publish_to_another_devices_up_or_to_down(mosquitto, mqtt_client):
    cloud = mqtt_client(mosquitto, "cloud")
    cloud.subscribe("edge/#")
    dev_a = mqtt_client(mosquitto, "dev-a")
    dev_a.publish(T.up("dev-b", MessageType.STATUS), b"forged status of dev-b")
    dev_a.publish(T.down("dev-a", MessageType.FEATURE_BATCH, "s"), b"forged down")
    dev_a.publish("edge/broadcast/features/s", b"forged broadcast")
    dev_a.publish(T.up("dev-a", MessageType.STATUS), b"own status")
    received = [(m.topic, m.payload) for m in cloud.drain()]
    assert received == [(T.up("dev-a", MessageType.STATUS), b"own status")]


def test_devices_read_broadcast_and_cloud_reads_every_up(mosquitto, mqtt_client):
    cloud = mqtt_client(mosquitto, "cloud")
    cloud.subscribe(T.cloud_subscriptions()[0])
    devices = {name: mqtt_client(mosquitto, name) for name in ("dev-a", "dev-b")}
    for name, client in devices.items():
        for topic in T.device_subscriptions(name):
            client.subscribe(topic)
    cloud.publish(T.broadcast(MessageType.MODEL_MANIFEST, "ranker"), b"release")
    for name, client in devices.items():
        msg = client.receive()
        assert msg is not None, name
        assert msg.payload == b"release", name
        client.publish(T.up(name, MessageType.HELLO), name.encode())
    assert sorted(m.payload for m in cloud.drain()) == [b"dev-a", b"dev-b"]


def test_restart_keeps_port_and_persistent_sessions(mosquitto, mqtt_client):
    port = mosquitto.port
    topic = T.down("dev-a", MessageType.FEATURE_BATCH, "s")
    device = mqtt_client(mosquitto, "dev-a", client_id="dev-a-agent", clean=False, session_expiry=3600)
    device.subscribe(topic)
    device.close()
    cloud = mqtt_client(mosquitto, "cloud")
    for i in range(3):
        cloud.publish(topic, b"queued %d" % i)
    cloud.close()
    mosquitto.restart()
    assert mosquitto.port == port
    assert mosquitto.running
    back = mqtt_client(mosquitto, "dev-a", client_id="dev-a-agent", clean=False, session_expiry=3600)
    assert back.connected
    assert [m.payload for m in back.drain()] == [b"queued 0", b"queued 1", b"queued 2"]


def test_max_queued_messages_drops_messages_for_an_offline_subscriber(start_broker, mqtt_client):
    """The fact gap detection relies on: a full queue loses QoS-1 messages silently."""
    broker = start_broker(max_queued_messages=5)
    topic = T.down("dev-a", MessageType.FEATURE_BATCH, "s")
    device = mqtt_client(broker, "dev-a", client_id="dev-a-agent", clean=False, session_expiry=3600)
    device.subscribe(topic)
    device.close()
    cloud = mqtt_client(broker, "cloud")
    for i in range(20):
        info = cloud.publish(topic, b"%d" % i)
        assert info.is_published()  # the broker acknowledged every single one...
    back = mqtt_client(broker, "dev-a", client_id="dev-a-agent", clean=False, session_expiry=3600)
    received = [int(m.payload) for m in back.drain(quiet=0.5)]
    # ...yet only the first five were kept for the offline device; the rest are gone without a trace.
    assert received == [0, 1, 2, 3, 4]


def test_max_packet_size_is_announced_to_mqtt5_clients(start_broker, mqtt_client):
    broker = start_broker(max_packet_size=4096)
    client = mqtt_client(broker, "dev-a")
    assert client.connected
    assert client.connack_properties.MaximumPacketSize == 4096


def test_tls_with_the_generated_ca(start_broker, mqtt_client):
    broker = start_broker(tls=True)
    assert broker.url.startswith("mqtts://")
    assert broker.ca_file is not None
    assert stat.S_IMODE(os.stat(broker.directory / "server.key").st_mode) == 0o600
    device = mqtt_client(broker, "dev-a")
    assert device.connected
    device.subscribe(T.device_subscriptions("dev-a")[0])
    cloud = mqtt_client(broker, "cloud")
    cloud.publish(T.down("dev-a", MessageType.TELEMETRY_ACK), b"over tls")
    msg = device.receive()
    assert msg is not None
    assert msg.payload == b"over tls"
    untrusting = mqtt_client(broker, "dev-b", connect=False, password=broker.password("dev-b"), tls_ca=None)
    untrusting.client.tls_set()  # system CAs only: the generated CA is not among them
    with pytest.raises(ssl.SSLError):
        untrusting.client.connect(broker.host, broker.port)


def test_unix_socket_listener(start_broker, mqtt_client):
    broker = start_broker(unix_socket=True)
    assert broker.transport == "unix"
    assert broker.url == f"unix://{broker.socket_path}"
    device = mqtt_client(broker, "dev-a")
    device.subscribe(T.device_subscriptions("dev-a")[0])
    cloud = mqtt_client(broker, "cloud")
    cloud.publish(T.down("dev-a", MessageType.TELEMETRY_ACK), b"via socket")
    msg = device.receive()
    assert msg is not None
    assert msg.payload == b"via socket"


def test_add_device_on_a_running_broker(mosquitto, mqtt_client):
    password = mosquitto.add_device("dev-c")
    assert _login(mosquitto, "dev-c", password) == 0
    assert _login(mosquitto, "dev-a") == 0  # existing users keep working after the reload
    dev_c = mqtt_client(mosquitto, "dev-c")
    for topic in T.device_subscriptions("dev-c"):
        dev_c.subscribe(topic)
    cloud = mqtt_client(mosquitto, "cloud")
    cloud.publish(T.down("dev-a", MessageType.TELEMETRY_ACK), b"not for c")
    cloud.publish(T.broadcast(MessageType.FEATURE_BATCH, "s"), b"fleet")
    assert [m.payload for m in dev_c.drain()] == [b"fleet"]
    with pytest.raises(BrokerError, match="cloud user"):
        mosquitto.add_device("cloud")
    with pytest.raises(BrokerError, match="device id"):
        mosquitto.add_device("a/b")


def test_credentials_file_is_private_json(mosquitto):
    path = mosquitto.write_credentials_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["url"] == mosquitto.url
    assert info["users"] == mosquitto.credentials
    assert stat.S_IMODE(os.stat(mosquitto.directory / "passwd").st_mode) == 0o600
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in (mosquitto.directory / "passwd").open())


def test_a_taken_port_is_reported_with_the_log(mosquitto_binary):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        broker = Mosquitto(BrokerConfig(port=port, start_timeout=2.0), binary=mosquitto_binary)
        try:
            with pytest.raises(BrokerError, match="Address already in use"):
                broker.start()
        finally:
            broker.close()


def test_a_bad_config_fails_with_mosquittos_own_message(mosquitto_binary):
    broker = Mosquitto(BrokerConfig(extra_config=("no_such_option 1",)), binary=mosquitto_binary)
    try:
        with pytest.raises(BrokerError) as exc:
            broker.start()
        assert "no_such_option" in exc.value.log
        assert "no_such_option" in str(exc.value)
    finally:
        broker.close()


def test_missing_mosquitto_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(mosquitto_module, "SEARCH_DIRS", (str(tmp_path),))
    with pytest.raises(BrokerNotInstalledError) as exc:
        find_mosquitto()
    assert "apt-get install mosquitto" in str(exc.value)
    assert "brew install mosquitto" in str(exc.value)
    assert exc.value.exit_code == 3
    with pytest.raises(BrokerNotInstalledError, match="apt-get install mosquitto"):
        find_mosquitto(tmp_path / "mosquitto")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"prefix": "bad/#"}, "prefix"),
        ({"devices": ("ok", "no spaces")}, "device id"),
        ({"devices": ("cloud",)}, "cloud user"),
        ({"port": 70000}, "port"),
        ({"unix_socket": True, "tls": True}, "TLS"),
        ({"max_queued_messages": -1}, "max_queued_messages"),
    ],
)
def test_invalid_config_is_refused(overrides, message):
    with pytest.raises(BrokerError, match=message):
        BrokerConfig(**overrides)


def test_mqtt311_clients_work_too(mosquitto, mqtt_client):
    device = mqtt_client(mosquitto, "dev-a", protocol=mqtt.MQTTv311)
    assert device.connected
    device.subscribe(T.device_subscriptions("dev-a")[0])
    cloud = mqtt_client(mosquitto, "cloud", protocol=mqtt.MQTTv311)
    cloud.publish(T.down("dev-a", MessageType.TELEMETRY_ACK), b"3.1.1")
    msg = device.receive()
    assert msg is not None
    assert msg.payload == b"3.1.1"
