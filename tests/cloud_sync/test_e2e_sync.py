"""End to end: the REAL cloud publisher and the REAL device agent over a real mosquitto.

Feature sync (snapshot, deltas, tombstones), a device offline during publishes, messages the broker drops,
a broker restart in the middle of a model transfer, a model release installed while predictions continue, and
telemetry from the runtime's outbox to the cloud.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _agent_support import VIEW, make_bundle, make_device, score_of, wait_until

pytestmark = pytest.mark.timeout(120)

T0 = 1_700_000_000.0


def _rows(ids: range | list[int], device: str = "dev-a", score: float = 1.0, ts: float = T0) -> list[dict[str, Any]]:
    return [{"user_id": i, "score": score + i, "clicks": i, "event_timestamp": ts, "device_id": device} for i in ids]


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    from edge_runtime.models import generate_keypair

    return generate_keypair(tmp_path / "keys")


def _publisher(broker: Any, tmp_path: Path, **overrides: Any) -> Any:
    from cloud_sync.publisher import CloudConfig, CloudPublisher

    cfg = CloudConfig.from_credentials(
        broker.write_credentials_file(),
        db_path=tmp_path / "cloud.db",
        client_id=f"cloud-{time.monotonic_ns()}",
        **overrides,
    )
    return CloudPublisher(cfg).start()


@pytest.fixture
def cloud(mosquitto: Any, tmp_path: Path) -> Iterator[Any]:
    pub = _publisher(mosquitto, tmp_path)
    yield pub
    pub.stop()


def _wm(dev: Any) -> tuple[int, int] | None:
    return dev.agent.features.watermark(VIEW)


def test_feature_sync_snapshot_deltas_and_tombstones(tmp_path: Path, mosquitto: Any, cloud: Any) -> None:
    a = make_device(tmp_path / "a", mosquitto, "dev-a")
    b = make_device(tmp_path / "b", mosquitto, "dev-b")
    try:
        wait_until(lambda: a.agent.status()["connects"] and b.agent.status()["connects"], what="both connected")
        rows = _rows(range(0, 50), "dev-a") + _rows(range(50, 80), "dev-b")
        cloud.publish_features(VIEW, rows, join_keys=["user_id"], route="device_id", kind="snapshot")
        wait_until(lambda: score_of(a.features, 49) == 50.0 and score_of(b.features, 79) == 80.0, what="snapshot")
        assert score_of(a.features, 50) is None and score_of(b.features, 0) is None  # each only its own rows
        cloud.publish_features(
            VIEW, _rows([3], "dev-a", score=100.0, ts=T0 + 10), join_keys=["user_id"], route="device_id"
        )
        cloud.publish_features(
            VIEW, [], join_keys=["user_id"], route="device_id", tombstones=[{"user_id": 4, "device_id": "dev-a"}]
        )
        wait_until(lambda: score_of(a.features, 3) == 103.0 and score_of(a.features, 4) is None, what="deltas")
        head = _wm(a)
        assert head is not None and head[1] >= 3
        # The ledger heard the device's acks.
        wait_until(
            lambda: {s.device: s.streams_reported.get(VIEW) for s in cloud.fleet_status()}.get("dev-a") == head,
            what="ledger",
        )
    finally:
        a.close()
        b.close()


def test_a_device_offline_during_publishes_catches_up(tmp_path: Path, mosquitto: Any, cloud: Any) -> None:
    dev = make_device(tmp_path / "a", mosquitto)
    wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
    cloud.publish_features(VIEW, _rows(range(10)), join_keys=["user_id"], route="device_id", kind="snapshot")
    wait_until(lambda: score_of(dev.features, 9) == 10.0, what="snapshot")
    dev.close()
    for k in range(5):
        cloud.publish_features(VIEW, _rows([100 + k], ts=T0 + k), join_keys=["user_id"], route="device_id")
    cloud.publish_features(
        VIEW, _rows(range(20, 25), score=7.0), join_keys=["user_id"], route="device_id", kind="snapshot"
    )  # a new epoch while it is away
    dev = make_device(tmp_path / "a", mosquitto)
    try:
        wait_until(lambda: score_of(dev.features, 24) == 31.0, timeout=20, what="caught up")
        assert score_of(dev.features, 0) is None  # the new epoch's snapshot replaced the old content
        assert score_of(dev.features, 104) is None
    finally:
        dev.close()


def test_messages_the_broker_drops_are_healed_by_hello_and_catch_up(
    tmp_path: Path, start_broker: Callable[..., Any]
) -> None:
    broker = start_broker(max_queued_messages=3)
    cloud = _publisher(broker, tmp_path)
    dev = make_device(tmp_path / "a", broker)
    try:
        wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
        cloud.publish_features(VIEW, _rows([0]), join_keys=["user_id"], route="device_id", kind="snapshot")
        wait_until(lambda: score_of(dev.features, 0) == 1.0, what="snapshot")
        dev.close()
        for k in range(1, 31):
            cloud.publish_features(VIEW, _rows([k], ts=T0 + k), join_keys=["user_id"], route="device_id")
        dev = make_device(tmp_path / "a", broker, hello_interval_s=1.0)
        # The replay of the 27 lost deltas overflows the tiny queue again; the periodic hello heals the rest.
        wait_until(lambda: all(score_of(dev.features, k) == k + 1.0 for k in (1, 15, 30)), timeout=20, what="healed")
        assert cloud.stats().get("catchup", 0) + cloud.stats().get("hello", 0) >= 1
    finally:
        dev.close()
        cloud.stop()


def test_model_release_installs_while_predictions_continue(
    tmp_path: Path, mosquitto: Any, cloud: Any, keys: Any
) -> None:
    dev = make_device(tmp_path / "a", mosquitto, trusted=(keys.public_key,))
    try:
        wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
        dev.models.install(make_bundle(tmp_path / "b1", 1, keys.private_key), activate=True)
        failures: list[BaseException] = []
        stop = threading.Event()
        x = np.zeros((2, 4), dtype=np.float32)

        def predict() -> None:
            while not stop.is_set():
                try:
                    dev.models.active("ctr").run({"x": x})
                except BaseException as exc:
                    failures.append(exc)

        thread = threading.Thread(target=predict)
        thread.start()
        try:
            cloud.release(make_bundle(tmp_path / "b2", 2, None, hidden=3000), signing_key=keys.private_key)
            wait_until(lambda: dev.models.active_version("ctr") == 2, timeout=20, what="v2 active")
        finally:
            stop.set()
            thread.join()
        assert failures == []
        report = dev.agent.status()["install_reports"]["ctr.onnx-fp32"]
        assert (report["outcome"], report["active"]) == ("installed", 2)
        wait_until(lambda: any(s.models_reported.get("ctr") == 2 for s in cloud.fleet_status()), what="ledger")
    finally:
        dev.close()


def test_a_broker_restart_mid_transfer_resumes(tmp_path: Path, start_broker: Callable[..., Any], keys: Any) -> None:
    broker = start_broker()
    cloud = _publisher(broker, tmp_path, chunk_size=4096)
    dev = make_device(tmp_path / "a", broker, trusted=(keys.public_key,))
    dev.agent.models.window = 1  # slow the transfer down so the restart lands in the middle of it
    try:
        wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
        cloud.release(make_bundle(tmp_path / "b", 2, None, hidden=20000), signing_key=keys.private_key)

        def received() -> int:
            pending = dev.agent.status()["pending_downloads"]
            return int(pending[0]["chunks_received"]) if pending else 0

        wait_until(lambda: received() >= 5, timeout=20, what="transfer under way")
        broker.restart()
        assert dev.models.active_version("ctr") is None
        wait_until(lambda: dev.models.active_version("ctr") == 2, timeout=40, what="installed after the restart")
        assert dev.agent.status()["connects"] >= 2
    finally:
        dev.close()
        cloud.stop()


def test_runtime_telemetry_reaches_the_cloud_once(tmp_path: Path, mosquitto: Any, cloud: Any) -> None:
    from cloud_sync.agent import Credentials, DeviceAgent
    from edge_runtime import EdgeRuntime, RuntimeConfig, SyncSettings, TelemetrySettings

    rt = EdgeRuntime(
        RuntimeConfig(
            data_dir=tmp_path / "rt",
            telemetry=TelemetrySettings(enabled=True),
            sync=SyncSettings(broker_url=mosquitto.url, device_id="dev-a", reconnect_min_s=0.1, reconnect_max_s=0.5),
        ),
        start_sync=False,
    )
    rt.attach(
        "sync", DeviceAgent.for_runtime(rt, credentials=Credentials("dev-a", mosquitto.password("dev-a"))), start=True
    )
    try:
        assert rt.telemetry is not None
        for i in range(3):
            rt.telemetry.outbox.put("telemetry", {"period": i})
        wait_until(lambda: len(rt.telemetry.outbox) == 0, timeout=20, what="outbox drained")  # type: ignore[union-attr]
        assert cloud.telemetry_count("dev-a") == 3
    finally:
        rt.close()
