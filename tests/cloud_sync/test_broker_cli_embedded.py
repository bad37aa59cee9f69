"""The ``cloud-sync broker`` command and the amqtt embedded fallback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_sync.broker import EmbeddedBroker, mqtt_login
from cloud_sync.cli import build_parser


def _start_cli(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_sync.cli", "broker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    info: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        key, _, value = line.strip().partition(": ")
        info[key] = value
        if key in ("users", "auth"):
            return proc, info
    _, err = proc.communicate(timeout=5)
    pytest.fail(f"cloud-sync broker exited early: {err}")


@pytest.mark.mosquitto
def test_cli_broker_prints_url_and_credentials_and_stops_on_sigterm(mosquitto_binary, tmp_path):
    proc, info = _start_cli("--device", "pi-1", "--dir", str(tmp_path / "broker"))
    try:
        assert info["url"].startswith("mqtt://127.0.0.1:")
        creds = json.loads(Path(info["credentials"]).read_text())
        assert set(creds["users"]) == {"cloud", "pi-1"}
        port = int(info["url"].rsplit(":", 1)[1])
        assert mqtt_login(host="127.0.0.1", port=port, username="pi-1", password=creds["users"]["pi-1"]) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    # mosquitto itself is gone too, and --dir kept its files (persistence across runs).
    with pytest.raises(OSError):
        mqtt_login(host="127.0.0.1", port=port, username="pi-1", password="x", timeout=0.5)
    assert (tmp_path / "broker" / "mosquitto.db").exists()


def test_cli_broker_help_describes_every_option():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    broker_parser = sub.choices["broker"]
    for action in broker_parser._actions:
        assert action.help, action.dest


def test_cli_reports_errors_cleanly(capsys):
    from cloud_sync.cli import main

    assert main(["broker", "--prefix", "bad/#"]) == 1
    assert "cloud-sync: error:" in capsys.readouterr().err


def test_embedded_amqtt_broker_roundtrip():
    pytest.importorskip("amqtt")
    received: list[bytes] = []
    subscribed = threading.Event()
    with EmbeddedBroker() as broker:
        assert broker.running
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo", protocol=mqtt.MQTTv311)
        client.on_message = lambda c, u, m: received.append(bytes(m.payload))
        client.on_subscribe = lambda *args: subscribed.set()
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            client.subscribe("edge/broadcast/#", qos=1)
            assert subscribed.wait(5)
            client.publish("edge/broadcast/hello", b"embedded", qos=1).wait_for_publish(5)
            deadline = time.monotonic() + 5
            while not received and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            client.disconnect()
            client.loop_stop()
    assert received == [b"embedded"]
    assert not broker.running


def _mosquittos_using(directory: Path) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in cmdline and b"mosquitto" in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.mosquitto
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
@pytest.mark.parametrize("delay", [0.15, 0.22, 0.3])
def test_cli_broker_sigterm_at_any_moment_leaves_no_mosquitto_behind(mosquitto_binary, tmp_path, delay):
    directory = tmp_path / "broker"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_sync.cli", "broker", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)  # interpreter start-up takes about this long: hit before, during and after the broker start
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _mosquittos_using(directory) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _mosquittos_using(directory) == []


def test_both_brokers_satisfy_the_broker_handle_protocol(mosquitto):
    pytest.importorskip("amqtt")
    from cloud_sync.broker import BrokerHandle

    handles: list[BrokerHandle] = [mosquitto, EmbeddedBroker()]  # mypy checks the structure statically
    assert all(isinstance(h, BrokerHandle) for h in handles)
