"""The agent inside an EdgeRuntime (profile with [sync]), telemetry draining, credentials files and the
``cloud-sync agent`` command — all against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _agent_support import VIEW, RawCloud, rows_batch, score_of, wait_until

from cloud_sync.agent import load_credentials
from cloud_sync.protocol import Ack, Hello, MessageType, Status, TelemetryAck, TelemetryBatch
from edge_runtime import ConfigError, EdgeRuntime, load_config

pytestmark = pytest.mark.timeout(60)

DEFS = f"""
[[entity]]
name = "user"
join_keys = ["user_id"]

[[feature_view]]
name = "{VIEW}"
entities = ["user"]
schema = [{{ name = "score", dtype = "float64" }}, {{ name = "clicks", dtype = "int64" }}]
"""


def _profile(tmp_path: Path, broker: Any, *, telemetry: bool = False) -> Path:
    (tmp_path / "defs.toml").write_text(DEFS)
    creds = tmp_path / "creds.toml"
    creds.write_text(f'username = "dev-a"\npassword = "{broker.password("dev-a")}"\n')
    creds.chmod(0o600)
    os.chmod(creds, 0o600)
    profile = tmp_path / "device.toml"
    profile.write_text(
        f"""
profile = "test-device"
data_dir = "data"
definitions = "defs.toml"

[telemetry]
enabled = {str(telemetry).lower()}

[sync]
broker = "{broker.url}"
device_id = "dev-a"
credentials_file = "creds.toml"
reconnect_min_s = 0.1
reconnect_max_s = 0.5
"""
    )
    return profile


def test_runtime_starts_the_agent_and_reports_its_status(tmp_path: Path, mosquitto: Any) -> None:
    cloud = RawCloud(mosquitto)
    rt = EdgeRuntime(load_config(_profile(tmp_path, mosquitto)))
    try:
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello))
        cloud.send_batch("dev-a", rows_batch([1, 2], kind="snapshot"), epoch=1, first_seq=1)
        cloud.wait_for(lambda t, e, m: isinstance(m, Ack) and m.status == "applied")
        assert score_of(rt.features, 1) == 2.0
        sync = rt.status()["sync"]
        json.dumps(sync)  # JSON-able
        assert sync["connection"] == "connected"
        assert sync["watermarks"] == {VIEW: {"epoch": 1, "applied": 1}}
    finally:
        rt.close()
        cloud.close()
    assert rt.agent is None


def test_telemetry_is_drained_at_least_once_and_marked_sent_on_ack(tmp_path: Path, mosquitto: Any) -> None:
    cloud = RawCloud(mosquitto)
    rt = EdgeRuntime(load_config(_profile(tmp_path, mosquitto, telemetry=True)))
    try:
        assert rt.telemetry is not None
        outbox = rt.telemetry.outbox
        ids = [outbox.put("telemetry", {"models": {"ctr": {"predictions": i}}}) for i in range(3)]
        _, _, batch = cloud.wait_for(lambda t, e, m: isinstance(m, TelemetryBatch))
        assert sorted(r.id.hex() for r in batch.records) == sorted(ids)
        assert json.loads(batch.records[0].values["json"])["models"]["ctr"]["predictions"] in (0, 1, 2)
        assert len(outbox) == 3  # nothing is forgotten before the cloud's ack
        ack = TelemetryAck((*tuple(r.id for r in batch.records), b"\x00" * 16))  # plus an unknown id
        cloud.publish(cloud.topics.down("dev-a", MessageType.TELEMETRY_ACK), ack, device="dev-a", wait=True)
        wait_until(lambda: len(outbox) == 0, what="outbox drained")
    finally:
        rt.close()
        cloud.close()


def test_credentials_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('username = "dev-a"\n')
    with pytest.raises(ConfigError, match=r"c\.toml.*password"):
        load_credentials(path)
    path.write_text('username = "dev-a"\npassword = 7\n')
    with pytest.raises(ConfigError, match="password"):
        load_credentials(path)
    path.write_text('username = "dev-a"\npassword = "x"\nca_file = "missing.pem"\n')
    with pytest.raises(ConfigError, match="ca_file"):
        load_credentials(path)
    with pytest.raises(ConfigError, match="not found"):
        load_credentials(tmp_path / "nope.toml")


def test_wrong_password_keeps_retrying_and_is_reported(tmp_path: Path, mosquitto: Any) -> None:
    from _agent_support import define_store, sync_settings

    from cloud_sync.agent import Credentials, DeviceAgent
    from edge_runtime import ModelStore

    store = define_store(tmp_path / "f.db")
    models = ModelStore(tmp_path / "m")
    agent = DeviceAgent(
        sync_settings(mosquitto),
        features=store,
        models=models,
        data_dir=tmp_path / "sync",
        credentials=Credentials("dev-a", "wrong"),
    ).start()
    try:
        wait_until(lambda: any("refused" in e["error"] for e in agent.status()["last_errors"]), what="refusal")
        assert agent.status()["connection"] != "connected"
    finally:
        agent.stop()
        store.close()
        models.close()


def test_cloud_sync_agent_command_runs_until_sigterm(tmp_path: Path, mosquitto: Any) -> None:
    profile = _profile(tmp_path, mosquitto)
    cloud = RawCloud(mosquitto)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_sync.cli", "agent", "--config", str(profile), "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cloud.wait_for(lambda t, e, m: isinstance(m, Hello), timeout=20)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        cloud.close()
    assert proc.returncode == 0, err
    assert out.startswith("agent: device dev-a")
    final = json.loads(out.strip().splitlines()[-1])
    assert final["device_id"] == "dev-a"
    assert any(isinstance(m, Status) and m.state == "offline" for _, _, m in cloud.seen)


def test_cloud_sync_agent_command_refuses_a_profile_without_sync(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text('profile = "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_sync.cli", "agent", "--config", str(profile)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "[sync]" in proc.stderr


def test_for_runtime_needs_sync_and_process_message_needs_a_stopped_agent(tmp_path: Path, mosquitto: Any) -> None:
    from _agent_support import define_store, sync_settings

    from cloud_sync import CloudSyncError
    from cloud_sync.agent import DeviceAgent
    from edge_runtime import ModelStore, RuntimeConfig

    with EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "rt")) as rt, pytest.raises(ConfigError, match="sync"):
        DeviceAgent.for_runtime(rt)
    store = define_store(tmp_path / "f.db")
    models = ModelStore(tmp_path / "m")
    agent = DeviceAgent(sync_settings(mosquitto), features=store, models=models, data_dir=tmp_path / "s")
    agent.process_message("edge/dev/dev-a/down/features/user_stats", b"junk")  # rejected, counted
    assert agent.status()["counters"]["rejected"] == 1
    agent.start()
    try:
        with pytest.raises(CloudSyncError, match="stopped agent"):
            agent.process_message("edge/dev/dev-a/down/features/user_stats", b"junk")
    finally:
        agent.stop()
        store.close()
        models.close()


def test_a_world_readable_credentials_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('username = "dev-a"\npassword = "secret"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        load_credentials(path)
    assert exc.value.key == "credentials_file" and "secret" not in str(exc.value)
    path.chmod(0o600)
    assert load_credentials(path).password == "secret"
