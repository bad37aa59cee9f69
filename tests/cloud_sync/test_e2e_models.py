"""End to end model releases: the REAL publisher and the REAL agent over a real mosquitto.

The device picks its preferred variant out of a multi-variant release of the repository's ctr bundles; an expired
release is refused before any chunk is fetched; a canary halts when its device refuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _agent_support import make_device, wait_until

pytestmark = pytest.mark.timeout(120)

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def keys(tmp_path: Path) -> Any:
    from edge_runtime.models import generate_keypair

    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def cloud(mosquitto: Any, tmp_path: Path) -> Iterator[Any]:
    from cloud_sync.publisher import CloudConfig, CloudPublisher

    cfg = CloudConfig.from_credentials(
        mosquitto.write_credentials_file(), db_path=tmp_path / "cloud.db", client_id=f"cloud-{time.monotonic_ns()}"
    )
    with CloudPublisher(cfg) as pub:
        yield pub


def test_device_installs_its_preferred_variant_of_a_multi_variant_release(
    tmp_path: Path, mosquitto: Any, cloud: Any, keys: Any
) -> None:
    dev = make_device(tmp_path / "a", mosquitto, trusted=(keys.public_key,), preference=("onnx-int8", "onnx-fp32"))
    try:
        wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
        for variant in ("ctr-onnx-fp32", "ctr-tflite-int8", "ctr-onnx-int8"):
            cloud.release(MODELS / variant, signing_key=keys.private_key)
        wait_until(lambda: dev.models.active_version("ctr") == 1, timeout=20, what="installed")
        installed = dev.models.versions("ctr")[0]
        assert installed.format == "onnx"
        reports = dev.agent.status()["install_reports"]
        assert reports["ctr.onnx-int8"]["outcome"] == "installed"
        assert "ctr.onnx-fp32" not in reports and "ctr.tflite-int8" not in reports  # never downloaded
        manifest = dev.models.active("ctr").manifest
        assert (manifest.metadata or {}).get("variant") == "onnx-int8"
    finally:
        dev.close()


def test_an_expired_release_is_refused_and_counted_as_a_failure(
    tmp_path: Path, mosquitto: Any, cloud: Any, keys: Any
) -> None:
    # The device's clock is two hours ahead: the one-hour release has expired for it.
    dev = make_device(tmp_path / "a", mosquitto, trusted=(keys.public_key,), wall_clock=lambda: time.time() + 7200)
    try:
        wait_until(lambda: dev.agent.status()["connects"] >= 1, what="connected")
        cloud.release(MODELS / "ctr-onnx-int8", signing_key=keys.private_key, expires_in=3600)
        wait_until(lambda: "ctr.onnx-int8" in dev.agent.status()["install_reports"], timeout=15, what="report")
        report = dev.agent.status()["install_reports"]["ctr.onnx-int8"]
        assert report["outcome"] == "refused" and "expired" in report["reason"]
        assert dev.models.active_version("ctr") is None
        wait_until(
            lambda: any(s.last_install and "refused" in s.last_install for s in cloud.fleet_status()),
            what="the ledger saw the refusal",
        )
    finally:
        dev.close()
