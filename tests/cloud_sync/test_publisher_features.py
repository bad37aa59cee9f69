"""Publishing features over a real mosquitto: routing, broadcast, and catch-ups answered from the delta log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _publisher_support import RawDevice, start_cloud, wait_until

from cloud_sync import PublisherError
from cloud_sync.protocol import CatchUpRequest, Hello

pytestmark = pytest.mark.mosquitto

ROWS = [
    {"user_id": 1, "device": "dev-a", "score": 0.25, "event_timestamp": "2026-01-01T00:00:00Z"},
    {"user_id": 2, "device": "dev-b", "score": 0.5, "event_timestamp": "2026-01-01T00:00:00Z"},
    {"user_id": 3, "device": "dev-a", "score": 0.75, "event_timestamp": "2026-01-01T00:00:01Z"},
]


def users(messages: list[Any]) -> list[int]:
    return sorted(u for _, _, m in messages for u in m.to_columns()["user_id"].tolist())


def test_each_row_goes_to_its_device_topic_only(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    spy = mqtt_client(mosquitto, "cloud")
    spy.subscribe("edge/#")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        result = cloud.publish_features("user_stats", ROWS, join_keys=["user_id"], route="device")
        assert {t.target: t.rows for t in result.targets} == {"dev-a": 2, "dev-b": 1}
        got_a, got_b = a.drain(), b.drain()
        assert [t for t, _, _ in got_a] == ["edge/dev/dev-a/down/features/user_stats"]
        assert [t for t, _, _ in got_b] == ["edge/dev/dev-b/down/features/user_stats"]
        assert users(got_a) == [1, 3] and users(got_b) == [2]
        _, env, batch = got_a[0]
        assert (env.device, env.stream, env.epoch, env.seq_first, batch.kind) == (
            "dev-a",
            "user_stats",
            1,
            1,
            "snapshot",
        )
        cols = batch.to_columns(timestamps="us")
        assert set(cols) == {"user_id", "score", "event_timestamp"}  # the route column is not sent
        assert cols["event_timestamp"].tolist() == [1767225600000000, 1767225601000000]
        # nothing but the two device topics carried features
        topics = {m.topic for m in spy.drain(first=0.5) if "/up/" not in m.topic}
        assert topics == {"edge/dev/dev-a/down/features/user_stats", "edge/dev/dev-b/down/features/user_stats"}
    finally:
        cloud.stop()


def test_a_device_cannot_receive_another_devices_rows(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    nosy = mqtt_client(mosquitto, "dev-b")
    nosy.subscribe("edge/dev/dev-a/down/#")  # the broker may even grant it; delivery is what counts
    nosy.subscribe("edge/dev/+/down/#")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        cloud.publish_features("user_stats", ROWS[:1], join_keys=["user_id"], route="device")
        assert nosy.drain(first=1.0) == []
    finally:
        cloud.stop()


def test_routing_by_mapping_callable_and_unrouted_rows(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    cloud = start_cloud(mosquitto, tmp_path)
    rows = [{k: v for k, v in r.items() if k != "device"} for r in ROWS]
    try:
        with pytest.raises(PublisherError, match="1 rows of user_stats have no device"):
            cloud.publish_features("user_stats", rows, join_keys=["user_id"], route={1: "dev-a", 2: "dev-b"})
        result = cloud.publish_features(
            "user_stats", rows, join_keys=["user_id"], route={1: "dev-a", 2: "dev-b"}, skip_unrouted=True
        )
        assert result.unrouted == 1
        assert users(a.drain()) == [1] and users(b.drain()) == [2]
        cloud.publish_features(
            "user_stats", rows, join_keys=["user_id"], route=lambda e: "dev-b" if e["user_id"] % 2 else "dev-a"
        )
        assert users(a.drain()) == [2] and users(b.drain()) == [1, 3]
        with pytest.raises(PublisherError, match="invalid device"):
            cloud.publish_features("user_stats", rows, join_keys=["user_id"], route=lambda e: "bad/device")
        with pytest.raises(PublisherError, match="either route"):
            cloud.publish_features("user_stats", rows, join_keys=["user_id"])
    finally:
        cloud.stop()


def test_broadcast_reaches_every_device(mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        result = cloud.publish_features(
            "region_stats",
            {"region": ["eu", "us"], "load": [0.5, 0.7]},
            join_keys=["region"],
            broadcast=True,
            timestamp_column=None,
        )
        assert [t.target for t in result.targets] == ["*"]
        for dev in (a, b):
            [(topic, env, batch)] = dev.drain()
            assert topic == "edge/broadcast/features/region_stats" and env.device == "*"
            assert batch.to_columns()["region"] == ["eu", "us"]
    finally:
        cloud.stop()


def test_hello_brings_a_device_that_was_offline_up_to_date(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        cloud.publish_features("user_stats", ROWS, join_keys=["user_id"], route="device")  # dev-a offline
        cloud.publish_features(
            "user_stats",
            [{"user_id": 5, "device": "dev-a", "score": 0.1, "event_timestamp": 5.0}],
            join_keys=["user_id"],
            route="device",
        )
        a = RawDevice(mqtt_client, mosquitto, "dev-a")
        a.send(Hello("test/1"))  # no watermarks: it has nothing
        got = a.drain()
        assert [(e.epoch, e.seq_first, m.kind) for _, e, m in got] == [(1, 1, "snapshot"), (1, 2, "delta")]
        assert all(t == "edge/dev/dev-a/down/features/user_stats" for t, _, _ in got)
        # it applied seq 1 only: the hello resends seq 2
        a.send(Hello("test/1", watermarks={"user_stats": (1, 1)}))
        assert [(e.epoch, e.seq_first) for _, e, _ in a.drain()] == [(1, 2)]
        # up to date: nothing
        a.send(Hello("test/1", watermarks={"user_stats": (1, 2)}))
        assert a.drain(first=0.8) == []
        assert cloud.stats()["catchup_replay"] == 2
    finally:
        cloud.stop()


def test_catch_up_request_is_answered_by_replay_or_snapshot(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        rows = [{"user_id": i, "device": "dev-a", "score": 0.0, "event_timestamp": 1.0} for i in range(20)]
        cloud.publish_features("user_stats", rows, join_keys=["user_id"], route="device")
        for k in range(3):
            row = {"user_id": k, "device": "dev-a", "score": float(k), "event_timestamp": 2.0 + k}
            cloud.publish_features("user_stats", [row], join_keys=["user_id"], route="device")
        assert len(a.drain()) == 4
        a.send(CatchUpRequest("user_stats", 1, 2, "gap", 1, 4), "user_stats")
        assert [(e.epoch, e.seq_first, m.kind) for _, e, m in a.drain()] == [(1, 3, "delta"), (1, 4, "delta")]
        # the device claims an epoch the cloud never had (its DB was restored): a fresh snapshot, epoch above it
        a.send(CatchUpRequest("user_stats", 9, 1, "gap"), "user_stats")
        got = a.drain()
        assert [(e.epoch, e.seq_first, m.kind, m.num_rows) for _, e, m in got] == [(10, 1, "snapshot", 20)]
        wait_until(lambda: cloud.stats().get("catchup_snapshot") == 1, what="the snapshot counter")
    finally:
        cloud.stop()


def test_publish_from_csv_jsonl_and_parquet_files(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd

    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    (tmp_path / "rows.csv").write_text(
        "user_id,device,score,event_timestamp\n1,dev-a,0.5,2026-01-01T00:00:00Z\n2,dev-a,,2026-01-01T00:00:00Z\n"
    )
    (tmp_path / "rows.jsonl").write_text(
        '{"user_id": 3, "device": "dev-a", "score": 1.5, "event_timestamp": 1767225600}\n'
    )
    frame = pd.DataFrame(
        {
            "user_id": [4, 5],
            "device": ["dev-a", "dev-a"],
            "score": [2.5, 3.5],
            "event_timestamp": pd.to_datetime(["2026-01-01T00:00:00Z", "2026-01-01T00:00:02Z"]),
        }
    )
    frame.to_parquet(tmp_path / "rows.parquet")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        for name in ("rows.csv", "rows.jsonl", "rows.parquet"):
            cloud.publish_features("user_stats", tmp_path / name, join_keys=["user_id"], route="device")
        got = a.drain()
        cols = [m.to_columns(timestamps="us") for _, _, m in got]
        assert [c["user_id"].tolist() for c in cols] == [[1, 2], [3], [4, 5]]
        assert cols[0]["score"] == [0.5, None]
        assert cols[2]["event_timestamp"].tolist() == [1767225600000000, 1767225602000000]
    finally:
        cloud.stop()


def test_the_worker_reconnects_after_a_broker_restart_and_keeps_serving(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    cloud = start_cloud(mosquitto, tmp_path, reconnect_min_s=0.05, reconnect_max_s=0.5)
    try:
        cloud.publish_features("user_stats", ROWS, join_keys=["user_id"], route="device")
        mosquitto.restart()
        wait_until(lambda: cloud.connection.connects >= 2, timeout=10, what="a reconnect")
        cloud.connection.wait_connected(10)
        # the persistent session keeps the subscription; a hello sent now is answered from the log
        a = RawDevice(mqtt_client, mosquitto, "dev-a")
        a.send(Hello("test/1"))
        got = a.drain()
        assert [(e.epoch, e.seq_first, m.kind) for _, e, m in got] == [(1, 1, "snapshot")]
        # and publishing works again
        cloud.publish_features("user_stats", ROWS[:1], join_keys=["user_id"], route="device")
        assert [(e.epoch, e.seq_first) for _, e, _ in a.drain()] == [(1, 2)]
    finally:
        cloud.stop()


def test_a_long_replay_is_paced_by_acks_so_a_small_broker_queue_drops_nothing(
    start_broker: Callable[..., Any], mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    from cloud_sync.protocol import Ack

    broker = start_broker(max_queued_messages=3)
    cloud = start_cloud(broker, tmp_path)
    try:
        cloud.publish_features("user_stats", ROWS[:1], join_keys=["user_id"], route="device")
        for k in range(60):  # dev-a is offline: these exist only in the log
            row = {"user_id": k, "device": "dev-a", "score": float(k), "event_timestamp": 10.0 + k}
            cloud.publish_features("user_stats", [row], join_keys=["user_id"], route="device")
        a = RawDevice(mqtt_client, broker, "dev-a")
        a.send(Hello("test/1", watermarks={"user_stats": (1, 1)}))
        seqs: list[int] = []
        while len(seqs) < 60:
            got = a.receive()
            assert got is not None, f"stalled after {seqs[-1:]}"
            _, env, _ = got
            if env.seq_first in seqs:
                continue
            seqs.append(env.seq_first)
            a.send(Ack(env.message_id, "user_stats", env.epoch, env.seq_last))
        assert seqs == list(range(2, 62))  # in order, none lost
    finally:
        cloud.stop()


def test_snapshots_and_tombstones_through_the_api(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path
) -> None:
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        cloud.publish_features("user_stats", ROWS, join_keys=["user_id"], route="device")
        a.drain(), b.drain()
        result = cloud.publish_features(
            "user_stats",
            [],
            join_keys=["user_id"],
            route="device",
            tombstones=[{"user_id": 3, "device": "dev-a", "event_timestamp": "2026-01-02T00:00:00Z"}],
        )
        assert [(t.target, t.kind, t.seq_first, t.tombstones) for t in result.targets] == [("dev-a", "delta", 2, 1)]
        [(_, env, batch)] = a.drain()
        tomb = batch.tombstone_columns(timestamps="us")
        assert batch.num_rows == 0 and tomb["user_id"].tolist() == [3]
        assert tomb["event_timestamp"].tolist() == [1767312000000000]
        assert b.drain(first=0.5) == []
        # a snapshot naming only dev-b empties dev-a (its rows are gone at the source), both in a new epoch
        snap = cloud.publish_features("user_stats", ROWS[1:2], join_keys=["user_id"], route="device", kind="snapshot")
        assert sorted((t.target, t.kind, t.epoch, t.rows) for t in snap.targets) == [
            ("dev-a", "snapshot", 2, 0),
            ("dev-b", "snapshot", 2, 1),
        ]
        [(_, env, batch)] = a.drain()
        assert (env.epoch, env.seq_first, batch.kind, batch.num_rows) == (2, 1, "snapshot", 0)
        with pytest.raises(PublisherError, match="takes no tombstones"):
            cloud.publish_features(
                "user_stats", ROWS, join_keys=["user_id"], route="device", kind="snapshot", tombstones=ROWS
            )
    finally:
        cloud.stop()
