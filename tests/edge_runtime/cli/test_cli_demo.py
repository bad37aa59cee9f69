"""`edge-runtime demo` run as a real subprocess: every serving mode's row, the invalidation, the statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _cli_helpers import MODELS

from edge_runtime.cli import main
from edge_runtime.cli._demo import ASSETS

MODE_ROWS = ("online", "streaming", "precomputed", "cached (miss)", "cached (hit)", "tensors", "batch")


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("edge-runtime")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from edge_runtime.cli import main; sys.exit(main())"]


def _run(*args: str, cwd: Path) -> str:
    # No network is needed: an unroutable proxy would break anything that tried.
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([*_cli(), *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


def _row(out: str, mode: str) -> list[str]:
    line = next((line for line in out.splitlines() if line.startswith(mode + "  ")), None)
    assert line is not None, f"no {mode!r} row in:\n{out}"
    return [cell for cell in line.split("  ") if cell.strip()]


def test_demo_prints_every_mode_the_invalidation_and_statuses(tmp_path: Path) -> None:
    out = _run("demo", cwd=tmp_path)  # any working directory: the demo needs no checkout files
    assert "model ctr v1: onnx, quantization dynamic-int8, 8.1 KB, backend onnxruntime" in out
    assert "seeded 5,000 users in user_data" in out
    for mode in MODE_ROWS:
        cells = _row(out, mode)
        if mode != "batch":
            assert cells[-1].strip().endswith("ms") or mode == "streaming", cells
    online = float(_row(out, "online")[2])
    assert 0.0 < online < 1.0
    before, after = (float(v) for v in _row(out, "streaming")[2].split(" -> "))
    assert "orders_last_10m 0 -> 3" in _row(out, "streaming")[1]
    assert after > before  # more recent orders, higher click-through probability
    assert _row(out, "cached (miss)")[3].strip() == "no" and _row(out, "cached (hit)")[3].strip() == "yes"
    assert _row(out, "cached (miss)")[2] == _row(out, "cached (hit)")[2]
    assert _row(out, "precomputed")[3].strip() == "yes"
    assert "5,000 rows scored" in _row(out, "batch")[2]
    # hit -> write -> miss with a new value -> hit
    steps = [line.split() for line in out.splitlines() if line.startswith(("1. predict", "3. predict", "4. predict"))]
    assert [step[-3] for step in steps] == ["hit", "miss", "hit"]
    assert steps[0][2] != steps[1][2] and steps[1][2] == steps[2][2]  # a new value after the write
    assert "write invalidated: " in out
    # the statuses of a fresh, an expired and a never-synced user
    ctr = next(line for line in out.splitlines() if line.startswith("user_data:click_through_rate"))
    assert ctr.split()[1:] == ["present", "expired", "defaulted"]
    pre = next(line for line in out.splitlines() if line.startswith("user_scores:ctr_prediction (precomputed)"))
    assert pre.split()[-1] == "missing"
    assert "(model fallback)" in out
    assert "demo finished in" in out and out.rstrip().endswith("offline")


def test_demo_keep_leaves_a_data_dir_the_other_commands_can_read(tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    _run("demo", "--users", "50", "--keep", str(data), cwd=tmp_path)
    status = json.loads(_run("status", "--data-dir", str(data), "--json", cwd=tmp_path))
    assert status["models"][0]["name"] == "ctr" and status["models"][0]["active"] == 1
    views = {v["name"]: v for v in status["features"]}
    assert views["user_data"]["rows"] == 50  # users 1..51 except user 3, who was never synced
    assert views["ctr_predictions"]["rows"] == 50


def test_packaged_assets_match_the_repository_models() -> None:
    # The demo ships a copy so it runs from a wheel; a rebuilt model must be copied here too.
    assert ASSETS.parent.name == "edge_runtime"
    for name in ("manifest.json", "model.onnx"):
        assert (ASSETS / "ctr-onnx-int8" / name).read_bytes() == (MODELS / "ctr-onnx-int8" / name).read_bytes()
    assert (ASSETS / "definitions.toml").read_bytes() == (MODELS / "definitions.toml").read_bytes()


def test_demo_on_another_bundle_of_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "20", "--bundle", str(MODELS / "ctr-tflite-int8")]) == 0
    out = capsys.readouterr().out
    assert "model ctr v1: tflite, quantization full-int8" in out
    assert "write invalidated: " in out


def test_demo_refuses_a_bundle_of_another_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--users", "20", "--bundle", str(MODELS / "large-onnx-int8")]) == 2
    assert "--bundle: the demo serves the click-through model" in capsys.readouterr().err
