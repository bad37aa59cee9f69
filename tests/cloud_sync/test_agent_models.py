"""The device agent's model updates: signed manifests, chunked resumable downloads, install, reports."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _agent_support import RawCloud, make_bundle, make_device, wait_until

from cloud_sync.protocol import Hello, InstallReport, MessageType
from edge_runtime.models import generate_keypair, sign_bundle

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: Any) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(root, v, keys.private_key, hidden=600) for v in (1, 2, 3)}


@pytest.fixture
def cloud(mosquitto: Any) -> Iterator[RawCloud]:
    c = RawCloud(mosquitto)
    yield c
    c.close()


@pytest.fixture
def device(tmp_path: Path, mosquitto: Any, cloud: RawCloud, keys: Any) -> Iterator[Any]:
    dev = make_device(tmp_path / "dev-a", mosquitto, trusted=(keys.public_key,))
    cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
    yield dev
    dev.close()


def _report(outcome: str | None = None) -> Any:
    return lambda t, e, m: isinstance(m, InstallReport) and (outcome is None or m.outcome == outcome)


def test_release_is_downloaded_installed_and_reported_while_predictions_continue(
    device: Any, cloud: RawCloud, bundles: dict[int, Path]
) -> None:
    device.agent.models.window = 4
    device.models.install(bundles[1], activate=True)
    x = np.zeros((1, 4), dtype=np.float32)
    failures: list[BaseException] = []
    stop = threading.Event()

    def predict() -> None:
        while not stop.is_set():
            try:
                device.models.active("ctr").run({"x": x})
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=predict)
    thread.start()
    try:
        msg = cloud.release(None, bundles[2], chunk_size=1024, corrupt={1})
        assert msg.chunk_count > 4
        _, _, report = cloud.wait_for(_report())
    finally:
        stop.set()
        thread.join()
    assert (report.outcome, report.version, report.active_version) == ("installed", 2, 2), report.reason
    assert device.models.active_version("ctr") == 2
    assert failures == []
    served = cloud.served[("ctr", 2)]
    requested = [i for window in served.requests for i in window]
    assert requested.count(1) == 2  # the corrupted chunk was fetched again, the others once
    assert all(requested.count(i) == 1 for i in range(msg.chunk_count) if i != 1)
    assert max(len(w) for w in served.requests) <= 4  # a window (refilled in halves), not everything at once
    assert len(served.requests) > msg.chunk_count // 4
    status = device.agent.status()
    assert status["models"] == {"ctr": 2} and status["pending_downloads"] == []
    assert not list((device.root / "sync" / "downloads").iterdir())  # no .part left behind


def _tampered(bundle: Path, root: Path) -> Path:
    out = root / "tampered"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["metadata"] = {"variant": "onnx-fp32", "note": "changed after signing"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("case", ["tampered", "unsigned", "expired", "downgrade"])
def test_bad_manifests_are_refused_and_nothing_is_downloaded(
    case: str, device: Any, cloud: RawCloud, bundles: dict[int, Path], keys: Any, tmp_path: Path
) -> None:
    if case == "tampered":
        bundle = _tampered(bundles[2], tmp_path)
    elif case == "unsigned":
        bundle = make_bundle(tmp_path, 2, None, hidden=600)
    elif case == "expired":
        bundle = make_bundle(
            tmp_path, 2, None, hidden=600, metadata={"variant": "onnx-fp32", "expires_at": "2020-01-01T00:00:00Z"}
        )
        sign_bundle(bundle, keys.private_key)
    else:
        device.models.install(bundles[3], activate=True)
        bundle = bundles[2]
    cloud.release(None, bundle, chunk_size=4096)
    _, _, report = cloud.wait_for(_report())
    assert report.outcome == "refused"
    expected = {"tampered": "altered", "unsigned": "not signed", "expired": "expired", "downgrade": "older"}[case]
    assert expected in report.reason
    assert cloud.served[("ctr", 2)].requests == []  # verified before downloading anything
    assert device.models.active_version("ctr") == (3 if case == "downgrade" else None)


def test_a_broken_transfer_resumes_after_a_restart(
    tmp_path: Path, mosquitto: Any, cloud: RawCloud, bundles: dict[int, Path], keys: Any
) -> None:
    dev = make_device(tmp_path / "dev-a", mosquitto, trusted=(keys.public_key,))
    msg = cloud.release("dev-a", bundles[2], chunk_size=2048, limit=6)
    wait_until(lambda: cloud.served[("ctr", 2)].sent >= 6, what="six chunks served")
    wait_until(lambda: dev.agent.status()["pending_downloads"][0]["chunks_received"] == 6, what="six chunks written")
    dev.close()
    served = cloud.served[("ctr", 2)]
    served.limit = None
    served.requests.clear()
    dev = make_device(tmp_path / "dev-a", mosquitto, trusted=(keys.public_key,))
    try:
        _, _, report = cloud.wait_for(_report())
        assert report.outcome == "installed", report.reason
        requested = {i for window in served.requests for i in window}
        assert requested == set(range(6, msg.chunk_count))  # only what was missing
    finally:
        dev.close()


def test_download_policy_defers_and_budget_is_counted(
    tmp_path: Path, mosquitto: Any, cloud: RawCloud, bundles: dict[int, Path], keys: Any
) -> None:
    from edge_runtime import DownloadPolicy

    policy = DownloadPolicy(max_bytes_per_day=5000)
    dev = make_device(tmp_path / "dev-a", mosquitto, trusted=(keys.public_key,), download=policy)
    try:
        cloud.release("dev-a", bundles[2], chunk_size=2048)
        wait_until(
            lambda: (dev.agent.status()["pending_downloads"] or [{}])[0].get("deferred") is not None,
            what="deferred",
        )
        pending = dev.agent.status()["pending_downloads"][0]
        assert "budget" in pending["deferred"] and pending["chunks_received"] == 2
    finally:
        dev.close()
    metered = DownloadPolicy(metered=True)
    dev = make_device(tmp_path / "dev-b", mosquitto, "dev-b", trusted=(keys.public_key,), download=metered)
    try:
        cloud.release("dev-b", bundles[2], chunk_size=2048)
        wait_until(lambda: bool(dev.agent.status()["pending_downloads"]), what="pending")
        assert "metered" in dev.agent.status()["pending_downloads"][0]["deferred"]
    finally:
        dev.close()


def test_device_chooses_the_preferred_runnable_variant(device: Any, cloud: RawCloud, keys: Any, tmp_path: Path) -> None:
    fp32 = make_bundle(tmp_path / "a", 2, keys.private_key, metadata={"variant": "onnx-fp32"})
    int8 = make_bundle(tmp_path / "b", 2, keys.private_key, metadata={"variant": "onnx-int8"}, hidden=9)
    cloud.release(None, fp32, channel="ctr.onnx-fp32")
    cloud.release(None, int8, channel="ctr.onnx-int8")
    _, _, report = cloud.wait_for(_report())
    assert (report.model, report.outcome) == ("ctr.onnx-int8", "installed")
    assert cloud.served[("ctr.onnx-fp32", 2)].requests == []
    assert MessageType.MODEL_MANIFEST  # imported for the topic helpers above


def test_a_release_failing_its_health_check_is_rolled_back_and_reported(
    device: Any, cloud: RawCloud, bundles: dict[int, Path], keys: Any, tmp_path: Path
) -> None:
    device.models.install(bundles[1], activate=True)
    bad = tmp_path / "bad"
    shutil.copytree(bundles[2], bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["health_check"]["expected"] = {
        k: (np.asarray(v) + 10.0).tolist() for k, v in manifest["health_check"]["expected"].items()
    }
    (bad / "manifest.json").write_text(json.dumps(manifest))
    sign_bundle(bad, keys.private_key)  # validly signed, but the model does not produce what it promises
    cloud.release(None, bad, chunk_size=4096)
    _, _, report = cloud.wait_for(_report())
    assert (report.outcome, report.active_version) == ("rolled_back", 1), report.reason
    assert device.models.active_version("ctr") == 1
