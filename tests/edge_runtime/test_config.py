"""Device profiles load, and every mistake names the file, the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime import ConfigError
from edge_runtime._config import (
    DownloadPolicy,
    OnWrite,
    RuntimeConfig,
    RuntimeSettings,
    ServingMode,
    SyncSettings,
    load_config,
)

PROFILES = sorted((Path(__file__).resolve().parents[2] / "device_configs").glob("*.toml"))


def test_the_required_profiles_exist() -> None:
    names = {p.stem for p in PROFILES}
    assert {"raspberry-pi-zero-2w", "raspberry-pi-4", "raspberry-pi-5", "laptop"} <= names


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_loads(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DEVICE_ID", "device-0001")
    config = load_config(profile)
    assert config.profile == profile.stem
    assert config.sync is None, "shipped profiles are offline until sync.enabled is set"
    assert config.telemetry.enabled is False, "telemetry must be opt-in"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles_work_offline_without_environment(profile: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/serving.md's first example: no EDGE_DEVICE_ID, no keys under /etc, a definitions file to apply
    monkeypatch.delenv("EDGE_DEVICE_ID", raising=False)
    config = load_config(profile)
    assert config.sync is None
    assert config.definitions is not None and config.definitions.is_file()


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_shipped_profiles_turn_sync_on_with_one_key(
    profile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_DEVICE_ID", "device-0001")
    on = tmp_path / profile.name
    on.write_text(profile.read_text().replace("enabled = false  # sync", "enabled = true  # sync"))
    config = load_config(on)
    assert config.sync is not None
    assert config.sync.device_id == "device-0001"


def test_sync_settings_are_checked_only_when_sync_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_DEVICE_ID", raising=False)
    text = '[sync]\nenabled = {}\nbroker = "mqtt://localhost:1883"\ndevice_id = "${{EDGE_DEVICE_ID}}"\n'
    assert load_config(_write(tmp_path, text.format("false"))).sync is None
    with pytest.raises(ConfigError, match="device_id"):
        load_config(_write(tmp_path, text.format("true")))
    # no enabled key: a [sync] table means sync is on, as before
    with pytest.raises(ConfigError, match="device_id"):
        load_config(_write(tmp_path, text.replace("enabled = {}\n", "")))
    with pytest.raises(ConfigError, match="enabled"):
        load_config(_write(tmp_path, text.format('"no"')))


def test_small_devices_prefer_int8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DEVICE_ID", "d1")
    for name in ("raspberry-pi-zero-2w", "raspberry-pi-4"):
        config = load_config(next(p for p in PROFILES if p.stem == name))
        assert config.runtime.variant_preference[0].endswith("int8")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'data_dir = "data"\ndefinitions = "defs.toml"\n'))
    assert config.data_dir == tmp_path / "data"
    assert config.definitions == tmp_path / "defs.toml"


def test_models_section(tmp_path: Path) -> None:
    config = load_config(
        _write(
            tmp_path,
            '[[models]]\nname = "ctr"\nmode = "cached"\non_write = "recompute"\n'
            '[[models]]\nname = "churn"\nmode = "precomputed"\nprediction_feature = "scores:churn"\n',
        )
    )
    assert config.model("ctr").mode is ServingMode.CACHED
    assert config.model("ctr").on_write is OnWrite.RECOMPUTE
    assert config.model("churn").prediction_feature == "scores:churn"
    assert config.model("unknown").mode is None


@pytest.mark.parametrize(
    ("text", "key", "expected_fragment"),
    [
        ("[runtime]\nthreads = 'two'\n", "runtime.threads", "integer"),
        ("[runtime]\nthreads = 0\n", "runtime.threads", "1..64"),
        ("[runtime]\nbackend = 'cuda'\n", "runtime.backend", "onnxruntime"),
        ("[runtime]\nvariant_preference = ['onnx-int4']\n", "runtime.variant_preference[0]", "onnx-int8"),
        ("[runtime]\nthreds = 2\n", "runtime.threds", "known key"),
        ("[cache]\nmax_rows_per_view = -1\n", "cache.max_rows_per_view", "positive"),
        ("[telemetry]\nenabled = 'yes'\n", "telemetry.enabled", "boolean"),
        ("[telemetry]\nepsilon = 0\n", "telemetry.epsilon", "> 0"),
        ("[sync]\ndevice_id = 'a'\n", "sync.broker", "string"),
        ("[sync]\nbroker = 'http://x'\ndevice_id = 'a'\n", "sync.broker", "mqtt://"),
        ("[sync]\nbroker = 'mqtt://x:1883'\ndevice_id = 'a/b'\n", "sync.device_id", "without '/'"),
        ("[sync]\nbroker = 'mqtt://x:1883'\ndevice_id = '${NOPE_NOT_SET_X}'\n", "sync.device_id", "VAR set"),
        (
            "[sync]\nbroker = 'mqtt://x:1883'\ndevice_id = 'a'\n[sync.download]\nallowed_hours = [3]\n",
            "sync.download.allowed_hours",
            "start_hour",
        ),
        (
            "[sync]\nbroker = 'mqtt://x:1883'\ndevice_id = 'a'\n[sync.download]\ntimezone = 'Mars/Olympus'\n",
            "sync.download.timezone",
            "IANA",
        ),
        ("[[models]]\nname = 'ctr'\nmode = 'magic'\n", "models[0].mode", "online"),
        ("[[models]]\nmode = 'online'\n", "models[0].name", "string"),
    ],
)
def test_mistakes_name_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, expected_fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOPE_NOT_SET_X", raising=False)
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key
    assert err.expected and expected_fragment in err.expected
    assert str(path) in str(err) and key in str(err)


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "runtime = [\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


def test_dataclasses_validate_when_built_in_python() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.threads"):
        RuntimeSettings(threads=100)
    with pytest.raises(ConfigError, match="allowed_hours"):
        DownloadPolicy(allowed_hours=(5, 5))
    with pytest.raises(ConfigError, match="broker"):
        SyncSettings(broker_url="tcp://x", device_id="d")
    with pytest.raises(TypeError):
        RuntimeConfig("positional")  # type: ignore[misc] - keyword-only by design
