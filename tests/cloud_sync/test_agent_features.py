"""The device agent applying feature batches, driven by real protocol messages through a real mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _agent_support import RawCloud, make_device, rows_batch, score_of, wait_until

from cloud_sync.protocol import Ack, CatchUpRequest, Hello, MessageType, Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cloud(mosquitto: Any) -> Iterator[RawCloud]:
    c = RawCloud(mosquitto)
    yield c
    c.close()


@pytest.fixture
def device(tmp_path: Path, mosquitto: Any, cloud: RawCloud) -> Iterator[Any]:
    dev = make_device(tmp_path / "dev-a", mosquitto)
    cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
    yield dev
    dev.close()


def _ack(status: str | None = None, applied: int | None = None) -> Callable[[str, Any, Any], bool]:
    return lambda t, e, m: (
        isinstance(m, Ack) and (status is None or m.status == status) and (applied is None or m.applied_seq == applied)
    )


def test_connect_announces_status_and_hello_then_applies_snapshot_and_delta(device: Any, cloud: RawCloud) -> None:
    assert any(isinstance(m, Status) and m.state == "online" for _, _, m in cloud.seen)
    assert device.agent.status()["connection"] == "connected"
    last = cloud.send_batch("dev-a", rows_batch([1, 2, 3], kind="snapshot"), epoch=1, first_seq=1)
    cloud.wait_for(_ack("applied", last))
    # The ack comes after the commit: the rows are readable now.
    assert score_of(device.features, 2) == 3.0
    cloud.send_batch("dev-a", rows_batch([2], score=10.0, ts=1_700_000_100.0), epoch=1, first_seq=last + 1)
    cloud.wait_for(_ack("applied", last + 1))
    assert score_of(device.features, 2) == 12.0
    assert device.agent.status()["watermarks"] == {"user_stats": {"epoch": 1, "applied": last + 1}}


def test_duplicates_and_reordering_apply_once(device: Any, cloud: RawCloud) -> None:
    cloud.send_batch("dev-a", rows_batch([1], kind="snapshot"), epoch=1, first_seq=1)
    cloud.wait_for(_ack("applied", 1))
    frames = {
        seq: cloud.batch_frames("dev-a", rows_batch([seq], score=float(seq)), epoch=1, first_seq=seq)[0]
        for seq in (2, 3, 4)
    }
    # 4, 3, 2 (reversed), then every one again.
    for seq in (4, 3, 2, 2, 3, 4):
        cloud.publish_raw(*frames[seq])
    cloud.wait_for(_ack("applied", 4))
    wait_until(lambda: sum(isinstance(m, Ack) and m.status == "duplicate" for _, _, m in cloud.seen) >= 3)
    assert device.agent.features.applied_batches == 4  # snapshot + three deltas, each once
    assert device.agent.features.watermark("user_stats") == (1, 4)
    assert [score_of(device.features, i) for i in (2, 3, 4)] == [4.0, 6.0, 8.0]


def test_gap_new_epoch_and_no_state_ask_for_catch_up(device: Any, cloud: RawCloud) -> None:
    cloud.send_batch("dev-a", rows_batch([1]), epoch=1, first_seq=1)  # a delta for a stream with no state
    _, _, req = cloud.wait_for(lambda t, e, m: isinstance(m, CatchUpRequest))
    assert (req.reason, req.stream, req.epoch, req.applied_seq) == ("no_state", "user_stats", 0, 0)
    assert t_endswith(cloud, "dev/dev-a/up/features/user_stats/catchup")
    cloud.send_batch("dev-a", rows_batch([1], kind="snapshot"), epoch=2, first_seq=1)
    cloud.wait_for(_ack("applied", 1))
    cloud.send_batch("dev-a", rows_batch([5]), epoch=2, first_seq=5)  # seqs 2..4 never came
    _, _, req = cloud.wait_for(lambda t, e, m: isinstance(m, CatchUpRequest) and m.reason == "gap")
    assert (req.epoch, req.applied_seq, req.seen_seq) == (2, 1, 5)
    assert score_of(device.features, 5) is None  # kept out until the gap is filled
    for seq in (2, 3, 4):
        cloud.send_batch("dev-a", rows_batch([seq]), epoch=2, first_seq=seq)
    cloud.wait_for(_ack("applied", 5))  # the buffered batch 5 applies once 2..4 arrived
    assert score_of(device.features, 5) == 6.0
    cloud.send_batch("dev-a", rows_batch([9]), epoch=3, first_seq=7)  # a newer epoch without its snapshot
    _, _, req = cloud.wait_for(lambda t, e, m: isinstance(m, CatchUpRequest) and m.reason == "new_epoch")
    assert (req.epoch, req.applied_seq, req.seen_epoch) == (2, 5, 3)


def t_endswith(cloud: RawCloud, suffix: str) -> bool:
    return any(t.endswith(suffix) for t, _, m in cloud.seen if isinstance(m, CatchUpRequest))


def test_multi_part_snapshot_replaces_the_view_and_tombstones_delete(device: Any, cloud: RawCloud) -> None:
    cloud.send_batch("dev-a", rows_batch(list(range(100)), kind="snapshot"), epoch=1, first_seq=1)
    cloud.wait_for(_ack("applied", 1))
    # A new epoch whose snapshot spans three messages and lacks users 0..49.
    parts = [
        replace(rows_batch(ids, kind="snapshot", score=100.0), part=i, parts=3)
        for i, ids in enumerate([list(range(50, 150)), list(range(150, 250)), list(range(250, 300))])
    ]
    topic = cloud.topics.down("dev-a", MessageType.FEATURE_BATCH, "user_stats")
    for i, part in enumerate(parts[:-1]):
        cloud.publish(topic, part, device="dev-a", stream="user_stats", epoch=2, seq=(i + 1, i + 1), wait=True)
    cloud.wait_for(_ack("applied", 2))
    assert score_of(device.features, 10) == 11.0  # old content still served mid-snapshot
    assert score_of(device.features, 250) is None
    cloud.publish(topic, parts[-1], device="dev-a", stream="user_stats", epoch=2, seq=(3, 3), wait=True)
    cloud.wait_for(_ack("applied", 3))
    assert score_of(device.features, 10) is None
    assert score_of(device.features, 250) == 350.0
    n = 3
    cloud.send_batch("dev-a", rows_batch([7], tombstones=[250, 251]), epoch=2, first_seq=n + 1)
    cloud.wait_for(_ack("applied", n + 1))
    assert score_of(device.features, 250) is None and score_of(device.features, 7) == 8.0


def test_starts_offline_and_connects_when_the_broker_comes_up(tmp_path: Path, start_broker: Callable[..., Any]) -> None:
    broker = start_broker()
    broker.stop()
    dev = make_device(tmp_path / "dev", broker)
    try:
        wait_until(lambda: dev.agent.status()["connection"] in ("connecting", "disconnected"), what="offline state")
        assert dev.agent.status()["connection"] != "connected"
        broker.start()
        wait_until(lambda: dev.agent.status()["connection"] == "connected", timeout=15, what="connected")
        assert dev.agent.status()["connects"] >= 1
    finally:
        dev.close()
