"""Model releases over a real mosquitto: signed manifests, chunk serving, device lists and self-halting canaries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _publisher_support import RawDevice, copy_bundle, start_cloud, wait_until

from cloud_sync import ReleaseError
from cloud_sync.protocol import Hello, InstallReport, ModelChunkRequest, ModelManifestMessage
from edge_runtime.models import Manifest, Signature, TrustedKeys, generate_keypair

pytestmark = pytest.mark.mosquitto
CHANNEL = "ctr.onnx-int8"


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    return generate_keypair(tmp_path / "keys")


def fetch(dev: RawDevice, manifest: ModelManifestMessage, window: int = 4) -> bytes:
    """Download every chunk in windows, checking each against the manifest's list."""
    chunks: dict[int, bytes] = {}
    for start in range(0, manifest.chunk_count, window):
        wanted = tuple(range(start, min(start + window, manifest.chunk_count)))
        dev.send(ModelChunkRequest(manifest.model, manifest.version, wanted), manifest.model)
        for _ in wanted:
            got = dev.receive()
            assert got is not None, f"chunk window {wanted} not served"
            topic, _, chunk = got
            assert topic == f"edge/dev/{dev.device}/down/models/{manifest.model}/chunk"
            assert hashlib.sha256(chunk.data).digest() == manifest.chunk_sha256[chunk.index]
            chunks[chunk.index] = chunk.data
    return b"".join(chunks[i] for i in range(manifest.chunk_count))


def manifest_of(dev: RawDevice) -> tuple[str, ModelManifestMessage]:
    got = dev.receive()
    assert got is not None, "no manifest"
    topic, _, message = got
    assert isinstance(message, ModelManifestMessage)
    return topic, message


def test_release_signs_publishes_a_retained_manifest_and_serves_chunks(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    bundle = copy_bundle(tmp_path)
    cloud = start_cloud(mosquitto, tmp_path, chunk_size=1000)
    try:
        with pytest.raises(ReleaseError, match="not signed"):
            cloud.release(bundle)
        result = cloud.release(bundle, signing_key=keys.private_key, expires_in=3600)
        assert (result.release.channel, result.release.scope, result.release.state) == (CHANNEL, "all", "active")
        assert not (bundle / "signature.json").exists()  # the caller's bundle is left alone
        # retained: a device that subscribes later still gets it
        dev = RawDevice(mqtt_client, mosquitto, "dev-a")
        topic, manifest = manifest_of(dev)
        assert topic == f"edge/broadcast/models/{CHANNEL}/manifest"
        model = (bundle / "model.onnx").read_bytes()
        assert (manifest.version, manifest.size, manifest.chunk_count) == (1, len(model), 9)
        assert manifest.sha256 == hashlib.sha256(model).digest()
        signed = Manifest.from_json(manifest.manifest)
        assert signed.metadata is not None and signed.metadata["expires_at"].endswith("Z")
        TrustedKeys([keys.public_key]).verify(manifest.manifest, Signature.from_json(manifest.signature))
        assert fetch(dev, manifest) == model
        # an index past the end is ignored; the rest of the window is served
        dev.send(ModelChunkRequest(CHANNEL, 1, (8, 99)), CHANNEL)
        assert [m.index for _, _, m in dev.drain()] == [8]
        wait_until(lambda: cloud.stats().get("chunks") == 10, what="chunk counter")
    finally:
        cloud.stop()


def test_versions_only_go_up_and_re_releasing_is_idempotent(mosquitto: Any, tmp_path: Path, keys: Any) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        first = cloud.release(copy_bundle(tmp_path, "v2", version=2), signing_key=keys.private_key)
        again = cloud.release(copy_bundle(tmp_path, "v2b", version=2), signing_key=keys.private_key)
        assert again.release.id == first.release.id
        with pytest.raises(ReleaseError, match="downgrade"):
            cloud.release(copy_bundle(tmp_path, "v1"), signing_key=keys.private_key)
        third = cloud.release(copy_bundle(tmp_path, "v3", version=3), signing_key=keys.private_key)
        states = {r.version: r.state for r in cloud.releases()}
        assert states == {2: "superseded", 3: "active"}
        assert third.release.version == 3
    finally:
        cloud.stop()


def test_release_to_a_device_list_serves_only_those_devices(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    cloud = start_cloud(mosquitto, tmp_path, chunk_size=4096)
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    try:
        result = cloud.release(copy_bundle(tmp_path), devices=["dev-a"], signing_key=keys.private_key)
        assert result.offered == ("dev-a",)
        topic, manifest = manifest_of(a)
        assert topic == f"edge/dev/dev-a/down/models/{CHANNEL}/manifest"
        assert b.drain(first=0.8) == []
        b.send(ModelChunkRequest(CHANNEL, 1, (0, 1)), CHANNEL)  # dev-b learned the name somehow: refused
        assert b.drain(first=0.8) == []
        assert len(fetch(a, manifest)) == manifest.size
        wait_until(lambda: cloud.stats().get("chunk_refused") == 1, what="the refusal")
    finally:
        cloud.stop()


def test_canary_halts_itself_when_failures_pass_the_threshold(
    start_broker: Callable[..., Any], mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    names = [f"dev-{i}" for i in range(6)]
    broker = start_broker(devices=tuple(names))
    cloud = start_cloud(broker, tmp_path, chunk_size=4096)
    devices = {n: RawDevice(mqtt_client, broker, n) for n in names}
    try:
        for dev in devices.values():
            dev.send(Hello("test/1", models={"ctr": 0}))
        wait_until(lambda: len(cloud.fleet_status()) == 6, what="six devices in the ledger")
        result = cloud.release(
            copy_bundle(tmp_path, version=2), canary_percent=50, failure_threshold=0.4, signing_key=keys.private_key
        )
        canary = list(result.offered)
        assert len(canary) == 3 and result.release.scope == "canary"
        for name, dev in devices.items():
            got = dev.drain(first=1.0 if name in canary else 0.5)
            assert [t for t, _, _ in got] == (
                [f"edge/dev/{name}/down/models/{CHANNEL}/manifest"] if name in canary else []
            )
        first, second, third = canary
        manifest = manifest_of_retained(mqtt_client, broker, first)
        fetch(devices[first], manifest)  # started (and then fails)
        devices[first].send(InstallReport(CHANNEL, 2, "failed", "health check failed"), CHANNEL)
        wait_until(lambda: cloud.release_targets(result.release.id)[first][1] == "failed", what="the report")
        assert cloud.releases()[0].state == "active"  # 1 of 3 = 33 % is not more than 40 %
        devices[second].send(InstallReport(CHANNEL, 2, "rolled_back", "p99 regression"), CHANNEL)
        wait_until(lambda: cloud.releases()[0].state == "halted", what="the halt")
        release = cloud.releases()[0]
        assert release.halt_reason is not None and "2 of 3" in release.halt_reason
        assert "rolled_back" in release.halt_reason
        # the offer is withdrawn where no download started: third's retained manifest is cleared ...
        assert devices[third].drain() == [(f"edge/dev/{third}/down/models/{CHANNEL}/manifest", None, None)]
        late = mqtt_client(broker, third)
        late.subscribe(f"edge/dev/{third}/down/#")
        assert late.drain(first=0.8) == []
        # ... its chunk requests are refused, while first (which had started) may still fetch
        devices[third].send(ModelChunkRequest(CHANNEL, 2, (0,)), CHANNEL)
        assert devices[third].drain(first=0.8) == []
        devices[first].send(ModelChunkRequest(CHANNEL, 2, (0,)), CHANNEL)
        assert [m.index for _, _, m in devices[first].drain()] == [0]
        # a device seen for the first time is not offered a halted release
        broker.add_device("dev-new")
        newcomer = RawDevice(mqtt_client, broker, "dev-new")
        newcomer.send(Hello("test/1"))
        assert newcomer.drain(first=0.8) == []
        assert cloud.stats()["halted"] == 1
    finally:
        cloud.stop()


def manifest_of_retained(mqtt_client: Callable[..., Any], broker: Any, device: str) -> ModelManifestMessage:
    """The retained manifest on ``device``'s topic, read by a fresh subscriber."""
    reader = RawDevice(mqtt_client, broker, device, subscribe=False)
    reader.client.subscribe(f"edge/dev/{device}/down/models/+/manifest")
    _, manifest = manifest_of(reader)
    return manifest


def test_a_canary_offers_itself_to_new_devices_by_rank(
    start_broker: Callable[..., Any], mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    from cloud_sync.publisher import canary_rank

    names = [f"node-{i}" for i in range(12)]
    broker = start_broker(devices=tuple(names))
    cloud = start_cloud(broker, tmp_path)
    try:
        result = cloud.release(
            copy_bundle(tmp_path), canary_percent=50, devices=names[:2], signing_key=keys.private_key
        )
        assert len(result.offered) == 1  # 50 % of the two named devices
        admitted = [n for n in names[2:] if canary_rank("ctr", 1, n) < 0.5]
        for name in names[2:]:
            dev = RawDevice(mqtt_client, broker, name)
            dev.send(Hello("test/1"))
            got = [t for t, _, _ in dev.drain(first=1.0 if name in admitted else 0.4)]
            assert got == ([f"edge/dev/{name}/down/models/{CHANNEL}/manifest"] if name in admitted else [])
        targets = cloud.release_targets(result.release.id)
        assert set(targets) == set(result.offered) | set(admitted)
        json.dumps([s.to_json() for s in cloud.fleet_status()])  # JSON-able
    finally:
        cloud.stop()


def test_a_canary_is_promoted_to_the_whole_fleet_by_releasing_it_again(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    b = RawDevice(mqtt_client, mosquitto, "dev-b")
    try:
        canary = cloud.release(copy_bundle(tmp_path), devices=["dev-a"], signing_key=keys.private_key)
        assert b.drain(first=0.6) == []
        promoted = cloud.release(copy_bundle(tmp_path, "again"), signing_key=keys.private_key)
        assert promoted.release.id == canary.release.id
        assert (promoted.release.scope, promoted.release.state) == ("all", "active")
        assert [t for t, _, _ in b.drain()] == [f"edge/broadcast/models/{CHANNEL}/manifest"]
        assert [(r.version, r.scope) for r in cloud.releases()] == [(1, "all")]
    finally:
        cloud.stop()


def test_halting_a_fleet_release_offers_the_previous_one_again(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, keys: Any
) -> None:
    cloud = start_cloud(mosquitto, tmp_path)
    try:
        cloud.release(copy_bundle(tmp_path, "v1"), signing_key=keys.private_key)
        cloud.release(copy_bundle(tmp_path, "v2", version=2), signing_key=keys.private_key)
        halted = cloud.halt(CHANNEL, 2, "p99 regression on the fleet")
        assert (halted.state, halted.halt_reason) == ("halted", "p99 regression on the fleet")
        assert {r.version: r.state for r in cloud.releases()} == {1: "active", 2: "halted"}
        late = RawDevice(mqtt_client, mosquitto, "dev-a")  # subscribes now: sees only what is retained
        _, manifest = manifest_of(late)
        assert manifest.version == 1
        with pytest.raises(ReleaseError, match="no release"):
            cloud.halt(CHANNEL, 7)
    finally:
        cloud.stop()
