"""The publisher's commands: cloud-sync publish, release, cloud and fleet status|releases, against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _publisher_support import ROOT, RawDevice, copy_bundle, wait_until

from cloud_sync.cli import main
from cloud_sync.protocol import Hello, InstallReport, ModelChunkRequest
from edge_runtime.models import generate_keypair

pytestmark = pytest.mark.mosquitto


def run(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_release_and_fleet_commands(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = mosquitto.write_credentials_file(tmp_path / "creds.json")
    db = tmp_path / "cloud.db"
    conn = ["--credentials", creds, "--db", db]
    a = RawDevice(mqtt_client, mosquitto, "dev-a")
    csv = tmp_path / "stats.csv"
    csv.write_text("user_id,device,score,event_timestamp\n1,dev-a,0.5,2026-01-01T00:00:00Z\n2,dev-b,0.7,1767225600\n")

    code, out, err = run(
        capsys, "publish", "user_stats", csv, "--join-key", "user_id", "--route-column", "device", *conn
    )
    assert code == 0, err
    assert "2 rows in 2 messages to 2 targets; 0 unrouted" in out
    [(topic, _, batch)] = a.drain()
    assert topic == "edge/dev/dev-a/down/features/user_stats" and batch.to_columns()["user_id"].tolist() == [1]

    route = tmp_path / "route.json"
    route.write_text(json.dumps({"1": "dev-a"}))
    code, out, err = run(capsys, "publish", "user_stats", csv, "--join-key", "user_id", "--route-map", route, *conn)
    assert code == 1 and "have no device" in err and "--skip-unrouted" in err
    code, out, _ = run(
        capsys,
        "publish",
        "user_stats",
        csv,
        "--join-key",
        "user_id",
        "--route-map",
        route,
        "--skip-unrouted",
        "--json",
        *conn,
    )
    result = json.loads(out)
    assert result["unrouted"] == 1 and result["targets"][0]["seq"] == "2..2"

    keys = generate_keypair(tmp_path / "keys")
    code, out, _ = run(
        capsys,
        "release",
        copy_bundle(tmp_path),
        "--device",
        "dev-a",
        "--signing-key",
        keys.private_key,
        "--chunk-size",
        4096,
        "--json",
        *conn,
    )
    assert code == 0
    [release] = json.loads(out)
    assert (release["channel"], release["scope"], release["offered"], release["chunks"]) == (
        "ctr.onnx-int8",
        "devices",
        ["dev-a"],
        3,
    )
    code, _, err = run(capsys, "release", copy_bundle(tmp_path, "unsigned"), *conn)
    assert code == 1 and "--signing-key" in err
    # the variants of one version, each on its own channel
    tflite = copy_bundle(tmp_path, "tflite", version=2, source=ROOT / "models" / "ctr-tflite-int8")
    onnx = copy_bundle(tmp_path, "onnx", version=2)
    code, out, _ = run(capsys, "release", onnx, tflite, "--signing-key", keys.private_key, "--json", *conn)
    assert code == 0
    assert [(r["channel"], r["version"], r["scope"]) for r in json.loads(out)] == [
        ("ctr.onnx-int8", 2, "all"),
        ("ctr.tflite-int8", 2, "all"),
    ]
    retained = mqtt_client(mosquitto, "dev-b")
    retained.subscribe("edge/broadcast/models/#")
    assert sorted(m.topic for m in retained.drain()) == [
        "edge/broadcast/models/ctr.onnx-int8/manifest",
        "edge/broadcast/models/ctr.tflite-int8/manifest",
    ]

    code, out, _ = run(capsys, "release", onnx, "--halt", "bad p99 on the canary", "--json", *conn)
    [halted] = json.loads(out)
    assert (halted["channel"], halted["state"], halted["halt_reason"]) == (
        "ctr.onnx-int8",
        "halted",
        "bad p99 on the canary",
    )
    code, out, _ = run(capsys, "fleet", "releases", "--db", db, "--json")
    assert [(r["channel"], r["version"], r["state"]) for r in json.loads(out)] == [
        ("ctr.tflite-int8", 2, "active"),
        ("ctr.onnx-int8", 2, "halted"),
        ("ctr.onnx-int8", 1, "superseded"),  # released to dev-a only: not offered to the fleet in its place
    ]
    assert ("edge/broadcast/models/ctr.onnx-int8/manifest", None, None) in a.drain()  # withdrawn

    a.send(Hello("agent/1", watermarks={"user_stats": (1, 2)}, models={"ctr": 0}))  # no worker runs: not seen
    code, out, _ = run(capsys, "fleet", "status", "--db", db)
    assert code == 0 and "no device has been seen yet" in out
    code, out, _ = run(capsys, "fleet", "releases", "--db", db)
    assert "ctr.onnx-int8" in out and "active" in out
    code, _, err = run(capsys, "fleet", "status", "--db", tmp_path / "nothing.db")
    assert code == 1 and "no publisher database" in err
    (tmp_path / "garbage.db").write_bytes(b"not SQLite at all" * 100)
    code, _, err = run(capsys, "fleet", "releases", "--db", tmp_path / "garbage.db")
    assert code == 1 and "garbage.db: cannot read the publisher database" in err
    code, _, err = run(capsys, "publish", "user_stats", csv, "--join-key", "user_id", "--broadcast")
    assert code == 1 and "--config" in err


def test_cloud_worker_serves_until_sigterm(
    mosquitto: Any, mqtt_client: Callable[..., Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = mosquitto.write_credentials_file(tmp_path / "creds.json")
    generate_keypair(tmp_path / "keys")
    config = tmp_path / "cloud.toml"
    config.write_text(
        '[broker]\ncredentials_file = "creds.json"\nclient_id = "worker-1"\n'
        '[store]\ndb = "state/cloud.db"\n'
        '[release]\nsigning_key = "keys/signing.key"\nchunk_size = 4096\nfailure_threshold = 0.5\n'
    )
    assert creds.parent == tmp_path
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"user_id": 7, "device": "dev-a", "score": 1.0, "event_timestamp": "2026-01-01T00:00:00Z"}\n')
    assert (
        run(
            capsys,
            "publish",
            "user_stats",
            rows,
            "--join-key",
            "user_id",
            "--route-column",
            "device",
            "--config",
            config,
        )[0]
        == 0
    )
    assert run(capsys, "release", copy_bundle(tmp_path), "--config", config)[0] == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_sync.cli", "cloud", "--config", str(config), "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "cloud worker connected" not in line:
            proc.wait(10)
            pytest.fail(f"the worker did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        a = RawDevice(mqtt_client, mosquitto, "dev-a")
        got = a.drain()  # the retained manifest
        assert [t for t, _, _ in got] == ["edge/broadcast/models/ctr.onnx-int8/manifest"]
        a.send(Hello("agent/1"))
        [(topic, _, batch)] = a.drain()
        assert topic.endswith("/down/features/user_stats") and batch.kind == "snapshot"
        a.send(ModelChunkRequest("ctr.onnx-int8", 1, (0, 1, 2)), "ctr.onnx-int8")
        assert sorted(m.index for _, _, m in a.drain()) == [0, 1, 2]
        a.send(InstallReport("ctr.onnx-int8", 1, "installed", active_version=1), "ctr.onnx-int8")

        def fleet() -> Any:
            _, out, _ = run(capsys, "fleet", "status", "--config", config, "--json")
            data = json.loads(out)
            return data if data and data[0]["models"]["reported"] == {"ctr": 1} else None

        [state] = wait_until(fleet, what="the worker to record the install")
        assert state["device"] == "dev-a" and state["models"]["desired"] == {"ctr": 1}
        code, out, _ = run(capsys, "fleet", "status", "--config", config)
        assert out.splitlines()[0].split() == [
            "device",
            "state",
            "last_seen",
            "models",
            "desired",
            "streams",
            "in_sync",
            "last",
        ]
        assert "dev-a" in out and "ctr=1" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0
