"""Hostile and broken input through a real mosquitto: malformed payloads (hypothesis), spoofed routes, other
devices' topics, dropped messages and broker restarts. The agent must survive all of it with its cache intact."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _agent_support import RawCloud, make_bundle, make_device, rows_batch, score_of, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync.protocol import Ack, CatchUpRequest, Codec, Hello, InstallReport, MessageType, to_envelope

pytestmark = pytest.mark.timeout(120)


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


_DOWN = ["features/user_stats", "models/ctr/manifest", "models/ctr/chunk", "telemetry/ack"]


def _valid_payloads(cloud: RawCloud) -> list[bytes]:
    codec = Codec()
    frames = cloud.batch_frames("dev-a", rows_batch([1, 2]), epoch=1, first_seq=2)
    return [frames[0][1], codec.encode(to_envelope(rows_batch([3]), device="dev-a", stream="user_stats"))]


@st.composite
def hostile(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["random", "mutated", "truncated", "crc-fixed"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    base = bytearray(draw(st.sampled_from(valid)))
    if kind == "truncated":
        return bytes(base[: draw(st.integers(0, len(base) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(base) - 1))
        base[i] = draw(st.integers(0, 255))
    if kind == "crc-fixed":  # damage the body but make the checksum agree, so field checks must catch it
        import struct
        import zlib

        base[-4:] = struct.pack("<I", zlib.crc32(bytes(base[:-4])))
    return bytes(base)


def test_malformed_payloads_never_crash_the_agent_or_touch_the_cache(device: Any, cloud: RawCloud) -> None:
    seq = [cloud.send_batch("dev-a", rows_batch([1], kind="snapshot", score=5.0), epoch=1, first_seq=1)]
    cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and m.applied_seq == 1)
    valid = _valid_payloads(cloud)
    where = st.sampled_from(["edge/dev/dev-a/down/", "edge/broadcast/"])

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(payloads=st.lists(st.tuples(where, st.sampled_from(_DOWN), hostile(valid)), min_size=1, max_size=6))
    def run(payloads: list[tuple[str, str, bytes]]) -> None:
        before = device.agent.status()["counters"]["received"]
        for base, path, payload in payloads:
            cloud.publish_raw(base + path, payload, wait=False)
        wait_until(lambda: device.agent.status()["counters"]["received"] >= before + len(payloads), what="handled")
        assert device.agent._worker is not None and device.agent._worker.is_alive()
        wm = device.agent.features.watermark("user_stats")
        assert wm is not None and wm[0] == 1
        seq[0] = max(seq[0], wm[1])

    run()
    # Still healthy: the next real batch applies.
    nxt = seq[0] + 1
    cloud.send_batch("dev-a", rows_batch([42], score=1.0), epoch=1, first_seq=nxt)
    cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and m.applied_seq >= nxt, timeout=15)
    assert score_of(device.features, 42) == 43.0
    assert device.agent.status()["counters"]["rejected"] > 0


def test_spoofed_envelopes_and_retained_clears_are_rejected_cleanly(device: Any, cloud: RawCloud) -> None:
    topic = cloud.topics.down("dev-a", MessageType.FEATURE_BATCH, "user_stats")
    # An envelope claiming another device, and one naming another stream, on dev-a's topic.
    cloud.publish(topic, rows_batch([1], kind="snapshot"), device="dev-b", stream="user_stats", epoch=1, seq=(1, 1))
    cloud.publish(topic, rows_batch([1], kind="snapshot"), device="dev-a", stream="other", epoch=1, seq=(1, 1))
    # A model chunk on a feature topic; an empty retained manifest (a withdrawn release).
    cloud.publish_raw(cloud.topics.broadcast(MessageType.MODEL_MANIFEST, "ctr"), b"", retain=True)
    wait_until(lambda: device.agent.status()["counters"]["rejected"] >= 2, what="rejections")
    errors = " ".join(e["error"] for e in device.agent.status()["last_errors"])
    assert "route" in errors
    assert device.agent.features.watermark("user_stats") is None
    assert score_of(device.features, 1) is None


def test_a_device_cannot_read_or_write_another_devices_topics(
    device: Any, cloud: RawCloud, mosquitto: Any, mqtt_client: Callable[..., Any]
) -> None:
    spy = mqtt_client(mosquitto, "dev-a")  # dev-a's own credentials, trying to read dev-b's data
    spy.subscribe("edge/dev/dev-b/down/#")
    spy.subscribe("edge/dev/+/up/#")
    cloud.send_batch("dev-b", rows_batch([1, 2, 3], kind="snapshot"), epoch=1, first_seq=1)
    cloud.send_batch("dev-a", rows_batch([9], kind="snapshot"), epoch=1, first_seq=1)  # a marker for dev-a
    cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and e.device == "dev-a")
    assert spy.drain(quiet=0.3, first=1.0) == []  # nothing delivered: not dev-b's features, not anyone's up/
    # Writing as dev-b: the broker drops it, the cloud never sees a hello from "dev-b".
    spy.publish("edge/dev/dev-b/up/hello", cloud.codec.encode(to_envelope(Hello("x"), device="dev-b")))
    time.sleep(0.5)
    assert not any(e is not None and e.device == "dev-b" for _, e, _ in cloud.seen)
    assert score_of(device.features, 1) is None and score_of(device.features, 9) == 10.0


def test_messages_the_broker_drops_are_detected_as_a_gap_and_healed(
    tmp_path: Path, start_broker: Callable[..., Any]
) -> None:
    broker = start_broker(max_queued_messages=3)
    cloud = RawCloud(broker)
    dev = make_device(tmp_path / "dev", broker)
    try:
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
        cloud.send_batch("dev-a", rows_batch([0], kind="snapshot"), epoch=1, first_seq=1)
        cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and m.applied_seq == 1)
        dev.close()  # offline; the persistent session keeps queueing, up to 3 messages
        frames = {s: cloud.batch_frames("dev-a", rows_batch([s]), epoch=1, first_seq=s)[0] for s in range(2, 23)}
        for s in range(2, 22):
            cloud.publish_raw(*frames[s])
        dev = make_device(tmp_path / "dev", broker)
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
        wait_until(lambda: dev.agent.features.watermark("user_stats") == (1, 4), what="the 3 queued applied")
        cloud.publish_raw(*frames[22])  # the next live batch reveals the hole the broker left
        _, _, req = cloud.wait_for(lambda t, e, m: isinstance(m, CatchUpRequest) and m.reason == "gap")
        assert (req.applied_seq, req.seen_seq) == (4, 22)
        for s in range(req.applied_seq + 1, 22):
            cloud.publish_raw(*frames[s])
        cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and m.applied_seq == 22, timeout=15)
        assert [score_of(dev.features, s) for s in (2, 11, 22)] == [3.0, 12.0, 23.0]
    finally:
        dev.close()
        cloud.close()


def test_a_broker_restart_mid_transfer_resumes_the_download(tmp_path: Path, start_broker: Callable[..., Any]) -> None:
    from edge_runtime.models import generate_keypair

    keys = generate_keypair(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "b", 2, keys.private_key, hidden=600)
    broker = start_broker()
    cloud = RawCloud(broker)
    dev = make_device(tmp_path / "dev", broker, trusted=(keys.public_key,))
    try:
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
        msg = cloud.release("dev-a", bundle, chunk_size=1024, limit=5)
        wait_until(lambda: cloud.served[("ctr", 2)].sent >= 5, what="five chunks")
        broker.restart()
        cloud.served[("ctr", 2)].limit = None
        wait_until(lambda: dev.agent.status()["connects"] >= 2, timeout=15, what="reconnect")
        _, _, report = cloud.wait_for(lambda t, e, m: isinstance(m, InstallReport), timeout=20)
        assert report.outcome == "installed", report.reason
        assert dev.models.active_version("ctr") == 2 and msg.chunk_count > 5
    finally:
        dev.close()
        cloud.close()
