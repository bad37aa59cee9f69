"""`edge-runtime predict`, `status`, `bench` and `serve` against a real data directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _cli_helpers import write_profile
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime import ConfigError
from edge_runtime.cli import main
from edge_runtime.cli._runtime import parse_pairs, parse_value


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# --- parsing -----------------------------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_integers_parse_as_integers(i: int) -> None:
    assert parse_value(str(i)) == i and type(parse_value(str(i))) is int


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_parse_as_floats(x: float) -> None:
    text = repr(x)
    if "." in text or "e" in text:
        assert parse_value(text) == x


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ("eu-west", "eu-west"), ("", "")])
def test_other_values(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_pairs() -> None:
    assert parse_pairs("user_id=1, region=eu,amount=2.5", "--entity") == {"user_id": 1, "region": "eu", "amount": 2.5}
    with pytest.raises(ConfigError, match="--entity: expected key=value, got 'user_id'"):
        parse_pairs("user_id", "--entity")


# --- predict -----------------------------------------------------------------------------------------------------


def test_predict_table(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(
        capsys, "predict", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=1", "--entity", "user_id=2"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("model ctr v1, mode online, 2 row(s), ") and lines[0].endswith(" ms")
    assert lines[1].split() == ["entity", "probability", "cached"]
    assert lines[3].split()[0] == "user_id=1" and lines[3].split()[2] == "no"
    ctr_line = next(line for line in lines if line.startswith("user_data:click_through_rate"))
    assert ctr_line.split()[1:] == ["present", "expired"]
    stream_line = next(line for line in lines if line.startswith("user_stream:orders_last_10m"))
    assert stream_line.split()[1:] == ["present", "present"]


def test_predict_json_matches_the_library(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    body = run_json(
        capsys, "predict", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=3", "--entity", "user_id=99"
    )
    from edge_runtime import EdgeRuntime, RuntimeConfig

    with EdgeRuntime(RuntimeConfig(data_dir=data_dir)) as rt:
        expected = rt.predict("ctr", [{"user_id": 3}, {"user_id": 99}]).output.reshape(-1).tolist()
    assert body["model"] == "ctr" and body["version"] == 1 and body["mode"] == "online"
    assert [p[0] for p in body["outputs"]["probability"]] == pytest.approx(expected, abs=1e-6)
    assert body["feature_status"]["user_data:is_premium"] == ["present", "defaulted"]
    assert body["cached"] == [False, False] and body["latency_ms"] > 0


def test_predict_cached_mode_hits_on_second_call(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    args = ("predict", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=4", "--mode", "cached")
    first = run_json(capsys, *args)
    second = run_json(capsys, *args)  # a new process-level runtime: the cache lives in the data dir
    assert first["cached"] == [False] and second["cached"] == [True]
    assert first["outputs"] == second["outputs"]


def test_predict_request_data(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    body = run_json(
        capsys, "predict", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=5", "--request", "channel=app"
    )
    assert len(body["outputs"]["probability"]) == 1


def test_predict_tensors(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(capsys, "predict", "--data-dir", str(data_dir), "ctr", "--input", "features=[[0,0,0,0,0,0,0,0]]")
    assert code == 0
    assert out.splitlines()[0].startswith("model ctr v1, mode tensors, 1 row(s)")
    assert "user_data:" not in out  # no feature statuses: no features were read


def test_predict_precomputed_from_profile(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "device.toml", data_dir)
    body = run_json(
        capsys,
        "predict",
        "--config",
        str(profile),
        "ctr",
        "--entity",
        "user_id=3",
        "--entity",
        "user_id=9",
        "--mode",
        "precomputed",
    )
    assert body["outputs"]["probability"][0] == [pytest.approx(0.3)]
    assert body["outputs"]["probability"][1] == [None]  # no stored score and no fallback: NaN, as JSON null
    assert body["feature_status"] == {"user_scores:ctr_prediction": ["present", "missing"]}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["ctr"], 2, "--entity: nothing to predict for"),
        (["ctr", "--entity", "user_id"], 2, "--entity: expected key=value"),
        (["fraud", "--entity", "user_id=1"], 1, "no active version of model 'fraud'"),
        (["ctr", "--entity", "uid=1"], 1, "join key 'user_id' is missing"),
        (["ctr", "--input", "features"], 2, "--input: cannot parse"),
        (["ctr", "--input", 'features=[["a"]]'], 2, "--input: input 'features' must be a nested list of numbers"),
        (["ctr", "--input", "features=[[1,2]]"], 1, "dimension 1 must be 8"),
        (["ctr", "--entity", "user_id=1", "--mode", "precomputed"], 2, "names no prediction feature"),
    ],
)
def test_predict_errors_are_clean(
    capsys: pytest.CaptureFixture[str], data_dir: Path, argv: list[str], code: int, message: str
) -> None:
    got, out, err = run(capsys, "predict", "--data-dir", str(data_dir), *argv)
    assert got == code and out == ""
    assert err.startswith("edge-runtime: error: ") and message in err
    assert "Traceback" not in err


def test_unknown_mode_is_rejected_by_the_parser(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=1", "--mode", "fast"])
    assert exc.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


def test_data_dir_overrides_the_profile(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "device.toml", tmp_path / "elsewhere")
    body = run_json(capsys, "status", "--config", str(profile), "--data-dir", str(data_dir))
    assert body["profile"] == "test-device" and body["data_dir"] == str(data_dir)
    assert body["models"][0]["name"] == "ctr"
    assert not (tmp_path / "elsewhere").exists()


def test_bad_profile_names_file_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[runtime]\nthreads = "many"\n')
    code, _, err = run(capsys, "status", "--config", str(bad))
    assert code == 2 and str(bad) in err and "threads" in err


# --- status ------------------------------------------------------------------------------------------------------


def test_status_table(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(capsys, "status", "--data-dir", str(data_dir))
    assert code == 0
    assert "profile: default" in out and f"data dir: {data_dir}" in out
    ctr = next(line for line in out.splitlines() if line.startswith("ctr "))
    assert ctr.split()[:3] == ["ctr", "1", "-"]
    user_data = next(line for line in out.splitlines() if line.startswith("user_data "))
    assert user_data.split()[1:5] == ["feature_view", "user", "20", "1"]  # 20 rows, user 2 expired
    assert "sync: off" in out and "telemetry: off" in out


def test_status_json_with_profile(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "device.toml", data_dir, sync=True, telemetry=True)
    body = run_json(capsys, "status", "--config", str(profile))
    assert body["profile"] == "test-device"
    (model,) = body["models"]
    assert (model["name"], model["active"], model["previous"]) == ("ctr", 1, None)
    assert isinstance(model["cached_predictions"], int)
    views = {v["name"]: v for v in body["features"]}
    assert views["user_scores"]["rows"] == 5 and views["user_data"]["expired"] == 1
    assert body["sync"]["broker"] == "mqtt://127.0.0.1:1" and body["sync"]["device_id"] == "pi-kitchen"
    assert body["telemetry"]["enabled"] is True


def test_status_of_an_empty_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "status", "--data-dir", str(tmp_path / "new"))
    assert code == 0 and "(none installed" in out and "(no definitions applied)" in out


# --- bench -------------------------------------------------------------------------------------------------------


def test_bench_every_mode(capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "device.toml", data_dir)
    body = run_json(
        capsys, "bench", "--config", str(profile), "ctr", "--entity", "user_id=1", "-n", "20", "--rows", "4"
    )
    assert body["rows_per_call"] == 4 and body["iterations"] == 20
    modes = {m["mode"]: m for m in body["modes"]}
    assert list(modes) == ["online", "cached", "precomputed", "tensors"]
    for m in modes.values():
        assert "error" not in m, m
        assert 0 < m["p50_ms"] <= m["p99_ms"]
        assert m["rows_per_s"] == pytest.approx(m["calls_per_s"] * 4)


def test_bench_table_reports_unservable_modes(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, _ = run(capsys, "bench", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=1", "-n", "5")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[3:]}
    assert set(lines) == {"online", "cached", "precomputed", "tensors"}
    assert "n/a" in lines["precomputed"] and "names no prediction feature" in lines["precomputed"]
    assert " ms" in lines["online"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "online,turbo"], "--modes: unknown mode 'turbo'"),
        (["-n", "0"], "--iterations: must be at least 1"),
        (["--rows", "0"], "--rows: must be at least 1"),
    ],
)
def test_bench_errors(capsys: pytest.CaptureFixture[str], data_dir: Path, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, "bench", "--data-dir", str(data_dir), "ctr", "--entity", "user_id=1", *argv)
    assert code == 2 and message in err


def test_bench_without_entities_only_in_tensors_mode(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, _, err = run(capsys, "bench", "--data-dir", str(data_dir), "ctr")
    assert code == 2 and "--entity" in err
    body = run_json(capsys, "bench", "--data-dir", str(data_dir), "ctr", "--modes", "tensors", "-n", "5", "--rows", "3")
    assert body["modes"][0]["mode"] == "tensors" and body["rows_per_call"] == 3


# --- serve -------------------------------------------------------------------------------------------------------


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("edge-runtime")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from edge_runtime.cli import main; sys.exit(main())"]


def test_serve_refuses_a_public_address(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, _, err = run(capsys, "serve", "--data-dir", str(data_dir), "--host", "0.0.0.0", "--port", "0")
    assert code == 2 and "no authentication" in err and "--allow-remote" in err


def test_serve_as_a_process_answers_and_stops_on_sigterm(data_dir: Path) -> None:
    proc = subprocess.Popen(
        [*_cli(), "serve", "--data-dir", str(data_dir), "--port", "0", "--threads", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("edge-runtime: serving the local API on http://127.0.0.1:"), line
        assert "(models: ctr v1)" in line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok", "store": "open", "models": {"ctr": 1}}
        req = urllib.request.Request(
            f"{url}/v1/predict/ctr",
            data=json.dumps({"entity_rows": [{"user_id": 1}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["version"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
