"""The fleet ledger and telemetry intake over a real mosquitto: what devices report vs what they should have."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _publisher_support import RawDevice, copy_bundle, start_cloud, wait_until

from cloud_sync.protocol import (
    Ack,
    Hello,
    InstallReport,
    Status,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
)
from cloud_sync.publisher import fleet_status
from edge_runtime.models import generate_keypair

pytestmark = pytest.mark.mosquitto


def test_ledger_tracks_desired_and_reported_state(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    try:
        a.send(Status("online", "agent/1", {"ctr": 1}), retain=True)
        a.send(Hello("agent/1", watermarks={}, models={"ctr": 1}))
        keys = generate_keypair(tmp_path / "keys")
        cloud.release(copy_bundle(tmp_path, version=2), signing_key=keys.private_key)
        result = cloud.publish_features(
            "user_stats",
            [{"user_id": 1, "score": 0.5, "event_timestamp": 1.0}],
            join_keys=["user_id"],
            route=lambda e: "dev-a",
        )
        assert result.targets[0].seq_last == 1
        cloud.wait_idle()
        [state] = cloud.fleet_status()
        assert (state.device, state.state, state.agent) == ("dev-a", "online", "agent/1")
        assert state.models_desired == {"ctr": 2} and state.models_reported == {"ctr": 1}
        assert state.streams_desired == {"user_stats": (1, 1)} and state.streams_reported == {}
        assert not state.in_sync and set(state.behind) == {"ctr<v2", "user_stats"}
        seen = state.last_seen_us

        a.drain()
        a.send(Ack(b"\x01" * 16, "user_stats", 1, 1))
        a.send(InstallReport("ctr.onnx-int8", 2, "installed", active_version=2, duration_ms=40), "ctr.onnx-int8")
        wait_until(lambda: cloud.fleet_status()[0].in_sync, what="dev-a in sync")
        [state] = cloud.fleet_status()
        assert state.models_reported == {"ctr": 2} and state.streams_reported == {"user_stats": (1, 1)}
        assert state.last_seen_us >= seen and state.last_install == "ctr v2 installed"

        a.send(Status("offline"), retain=True)  # what the last will says
        wait_until(lambda: cloud.fleet_status()[0].state == "offline", what="offline")
        # the same ledger, read straight from the database (what cloud-sync fleet status does)
        assert [s.to_json() for s in fleet_status(tmp_path / "cloud.db")] == [s.to_json() for s in cloud.fleet_status()]
    finally:
        cloud.stop()


def test_retained_status_of_a_device_seen_before_the_worker_started(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-b", subscribe=False)
    a.send(Status("online", "agent/1", {"ctr": 1}), retain=True)
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        [state] = wait_until(cloud.fleet_status, what="the retained status")
        assert (state.device, state.state, state.models_reported) == ("dev-b", "online", {"ctr": 1})
    finally:
        cloud.stop()


def test_telemetry_is_stored_once_and_every_id_acknowledged(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    try:
        records = tuple(
            TelemetryRecord(os.urandom(16), "latency", 1_000_000 + i, {"p50_us": 12.5, "n": i}) for i in range(3)
        )
        a.send(TelemetryBatch(records[:2]))
        [(topic, _, ack)] = a.drain()
        assert topic == "edge/dev/dev-a/down/telemetry/ack"
        assert isinstance(ack, TelemetryAck) and set(ack.ids) == {r.id for r in records[:2]}
        a.send(TelemetryBatch(records))  # a resend after a lost ack, plus one new record
        [(_, _, ack)] = a.drain()
        assert set(ack.ids) == {r.id for r in records}
        assert cloud.telemetry_count("dev-a") == 3 and cloud.telemetry_count() == 3
    finally:
        cloud.stop()


def test_garbage_from_devices_is_counted_and_ignored(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    try:
        a.client.publish("edge/dev/dev-a/up/hello", b"not a protocol message")
        a.client.publish("edge/dev/dev-a/up/no/such/path", b"ESP\x01")
        # a valid hello that claims to be another device inside the envelope: the route check refuses it
        from cloud_sync.protocol import to_envelope

        a.client.publish("edge/dev/dev-a/up/hello", a.codec.encode(to_envelope(Hello("x"), device="dev-b")))
        a.send(Hello("agent/1"))
        wait_until(lambda: cloud.stats().get("hello") == 1, what="the valid hello")
        assert cloud.stats()["rejected"] == 3
        assert [s.device for s in cloud.fleet_status()] == ["dev-a"]
    finally:
        cloud.stop()
