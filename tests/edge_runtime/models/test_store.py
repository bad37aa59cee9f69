"""ModelStore: install, activate, rollback, policy, garbage collection, recovery and bad inputs, on real models."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _model_factory import expected_output, make_bundle, sample_inputs, write_mlp

from edge_runtime import (
    BundleError,
    ConfigError,
    HealthCheckError,
    IntegrityError,
    ModelError,
    ModelNotFoundError,
    ModelStore,
    SignatureError,
    VersionPolicyError,
)
from edge_runtime.cli import main
from edge_runtime.models import HealthCheck, Manifest, generate_keypair, sign_bundle
from edge_runtime.models._fsutil import sha256_file

X = sample_inputs()


def _assert_serves(store: ModelStore, version: int, *, seed: int | None = None) -> None:
    model = store.active("ctr")
    assert model.version == version
    got = model.run({"x": X})["y"]
    np.testing.assert_allclose(got, expected_output(version if seed is None else seed, X), rtol=0, atol=1e-6)


@pytest.fixture
def bundles(tmp_path: Path) -> dict[int, Path]:
    return {v: make_bundle(tmp_path / "bundles", version=v) for v in (1, 2, 3, 4, 5)}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ModelStore]:
    with ModelStore(tmp_path / "store") as s:
        yield s


def test_install_activate_and_serve(store: ModelStore, bundles: dict[int, Path]) -> None:
    with pytest.raises(ModelNotFoundError, match="no active version of model 'ctr'"):
        store.active("ctr")
    v = store.install(bundles[1])
    assert (v.name, v.version, v.active, v.key_id) == ("ctr", 1, False, None)
    blob = store.bundle_path("ctr", 1)
    assert blob == store.root / "blobs" / v.digest
    assert sorted(p.name for p in blob.iterdir()) == ["manifest.json", "model.onnx"]
    assert not os.access(blob / "model.onnx", os.W_OK) or os.geteuid() == 0
    store.activate("ctr")
    _assert_serves(store, 1)
    assert store.active("ctr") is store.active("ctr")
    np.testing.assert_allclose(store.active("ctr").predict(X)["y"], expected_output(1, X), atol=1e-6)
    assert [e["action"] for e in store.events("ctr")] == ["activate", "install"]


def test_install_archive_and_activate_in_one_call(store: ModelStore, tmp_path: Path) -> None:
    archive = make_bundle(tmp_path / "b", version=2, archive=True)
    v = store.install(archive, activate=True)
    assert v.active
    _assert_serves(store, 2)


def test_reinstalling_the_same_bundle_is_a_no_op(store: ModelStore, bundles: dict[int, Path]) -> None:
    first = store.install(bundles[1])
    again = store.install(bundles[1])
    assert again == first
    assert [e["action"] for e in store.events("ctr")] == ["install"]


def test_same_version_with_different_content_is_refused(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_bundle(tmp_path / "a", version=1, seed=1), activate=True)
    with pytest.raises(VersionPolicyError, match="already installed with different content"):
        store.install(make_bundle(tmp_path / "b", version=1, seed=9))
    _assert_serves(store, 1)


def test_activate_latest_rollback_and_slots(store: ModelStore, bundles: dict[int, Path]) -> None:
    for v in (1, 2, 3):
        store.install(bundles[v])
    store.activate("ctr", 2)
    store.activate("ctr")  # latest
    _assert_serves(store, 3)
    assert (store.active_version("ctr"), store.previous_version("ctr")) == (3, 2)
    store.rollback("ctr")
    _assert_serves(store, 2)
    assert (store.active_version("ctr"), store.previous_version("ctr")) == (2, 3)
    store.rollback("ctr")
    _assert_serves(store, 3)
    slots = {v.version: (v.active, v.previous) for v in store.versions("ctr")}
    assert slots == {1: (False, False), 2: (False, True), 3: (True, False)}


def test_rollback_without_previous(store: ModelStore, bundles: dict[int, Path]) -> None:
    store.install(bundles[1], activate=True)
    with pytest.raises(ModelNotFoundError, match="no previous version"):
        store.rollback("ctr")
    _assert_serves(store, 1)


def test_downgrade_is_refused_unless_allowed(store: ModelStore, bundles: dict[int, Path]) -> None:
    store.install(bundles[1])
    store.install(bundles[3], activate=True)
    with pytest.raises(VersionPolicyError, match=r"ctr v1 is older than the active v3"):
        store.activate("ctr", 1)
    with pytest.raises(VersionPolicyError, match=r"ctr v2 is older than the active v3"):
        store.install(bundles[2])
    _assert_serves(store, 3)
    store.install(bundles[2], allow_downgrade=True)
    store.activate("ctr", 2, allow_downgrade=True)
    _assert_serves(store, 2)


def test_pinned_policy(tmp_path: Path, bundles: dict[int, Path]) -> None:
    with ModelStore(tmp_path / "s", policy={"ctr": 2}) as store:
        for v in (1, 2, 3):
            store.install(bundles[v])
        store.activate("ctr")
        _assert_serves(store, 2)
        with pytest.raises(VersionPolicyError, match="pinned to v2; refusing v3"):
            store.activate("ctr", 3)
        with pytest.raises(VersionPolicyError, match="pinned to v2"):
            store.install(bundles[4], activate=True)
        _assert_serves(store, 2)
        assert 4 in [v.version for v in store.versions("ctr")]
    with pytest.raises(ConfigError, match="policy"):
        ModelStore(tmp_path / "s", policy="newest")
    with pytest.raises(ConfigError, match="keep"):
        ModelStore(tmp_path / "s", keep=-1)


def test_keep_collects_old_versions(tmp_path: Path, bundles: dict[int, Path]) -> None:
    with ModelStore(tmp_path / "s", keep=1) as store:
        for v in (1, 2, 3, 4, 5):
            store.install(bundles[v])
        assert len(list((store.root / "blobs").iterdir())) == 5
        store.activate("ctr", 4)  # active 4; others 5, 3, 2, 1: keep the highest one (5)
        assert [v.version for v in store.versions("ctr")] == [4, 5]
        store.activate("ctr", 5)  # active 5, previous 4, nothing else
        assert [v.version for v in store.versions("ctr")] == [4, 5]
        kept = {v.digest for v in store.versions("ctr")}
        assert {p.name for p in (store.root / "blobs").iterdir()} == kept
        assert [e["action"] for e in store.events("ctr")].count("gc") == 3
        _assert_serves(store, 5)


def test_models_are_independent(store: ModelStore, tmp_path: Path) -> None:
    store.install(make_bundle(tmp_path / "a", name="ctr", version=1), activate=True)
    store.install(make_bundle(tmp_path / "b", name="churn", version=7, seed=3), activate=True)
    assert store.names() == ["churn", "ctr"]
    np.testing.assert_allclose(store.active("churn").run({"x": X})["y"], expected_output(3, X), atol=1e-6)
    _assert_serves(store, 1)


# --- bad inputs leave the active model serving --------------------------------------------------------------------


def _corrupt_model(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-5] ^= 0x55
    (bundle / "model.onnx").write_bytes(bytes(data))


def _rewrite(bundle: Path, **changes: Any) -> None:
    m = Manifest.load(bundle / "manifest.json")
    (bundle / "manifest.json").write_bytes(dataclasses.replace(m, **changes).to_json())


def _garbage_model_with_matching_hash(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"\x08\x07garbage that onnxruntime cannot parse")
    sha, size = sha256_file(bundle / "model.onnx")
    _rewrite(bundle, sha256=sha, size=size)


def _wrong_health_expectation(bundle: Path) -> None:
    m = Manifest.load(bundle / "manifest.json")
    assert m.health_check is not None
    _rewrite(bundle, health_check=HealthCheck(m.health_check.inputs, {"y": np.zeros((3, 1)).tolist()}, atol=1e-4))


def _wrong_input_name(bundle: Path) -> None:
    m = Manifest.load(bundle / "manifest.json")
    renamed = (dataclasses.replace(m.inputs[0], name="features"),)
    assert m.health_check is not None
    _rewrite(
        bundle,
        inputs=renamed,
        health_check=HealthCheck({"features": m.health_check.inputs["x"]}, m.health_check.expected),
    )


@pytest.mark.parametrize(
    ("breaker", "error", "match", "at"),
    [
        (_corrupt_model, IntegrityError, "sha256", "install"),
        (lambda b: (b / "model.onnx").write_bytes(b"short"), IntegrityError, "model file has 5 bytes", "install"),
        (lambda b: (b / "model.onnx").unlink(), BundleError, "model file 'model.onnx' is missing", "install"),
        (lambda b: (b / "manifest.json").unlink(), BundleError, "manifest file is missing", "install"),
        (lambda b: _rewrite(b, sha256="f" * 64), IntegrityError, "the manifest declares ffff", "install"),
        (
            lambda b: (b / "manifest.json").write_text(
                json.dumps({**json.loads((b / "manifest.json").read_text()), "version": -2})
            ),
            BundleError,
            "version: version -2 must be an integer >= 1",
            "install",
        ),
        (_garbage_model_with_matching_hash, HealthCheckError, "does not load", "activate"),
        (_wrong_health_expectation, HealthCheckError, "output 'y' is off by", "activate"),
        (_wrong_input_name, HealthCheckError, r"manifest inputs \['features'\]", "activate"),
    ],
)
def test_bad_bundles_give_typed_errors_and_leave_the_active_model_serving(
    store: ModelStore,
    bundles: dict[int, Path],
    breaker: Callable[[Path], object],
    error: type[Exception],
    match: str,
    at: str,
) -> None:
    store.install(bundles[1], activate=True)
    held = store.active("ctr")
    breaker(bundles[2])
    if at == "install":
        with pytest.raises(error, match=match):
            store.install(bundles[2], activate=True)
        assert [v.version for v in store.versions("ctr")] == [1]
        assert list((store.root / "tmp").iterdir()) == []
    else:
        store.install(bundles[2])
        with pytest.raises(error, match=match):
            store.activate("ctr", 2)
        assert store.active_version("ctr") == 1
        assert store.events("ctr")[0]["action"] == "activate-failed"
    assert store.active("ctr") is held
    _assert_serves(store, 1)


def test_wrong_input_at_predict_time_is_a_typed_error(store: ModelStore, bundles: dict[int, Path]) -> None:
    from edge_runtime import ModelInputError

    store.install(bundles[1], activate=True)
    model = store.active("ctr")
    with pytest.raises(ModelInputError):
        model.run({"nope": X})
    with pytest.raises(ModelInputError, match="shape"):
        model.run({"x": np.zeros((2, 7), dtype=np.float32)})
    with pytest.raises(ModelInputError, match="dtype int64"):
        model.run({"x": X.astype(np.int64)})
    _assert_serves(store, 1)


def test_signatures_required_with_trusted_keys(tmp_path: Path) -> None:
    keys = generate_keypair(tmp_path / "k", name="fleet")
    stranger = generate_keypair(tmp_path / "k", name="stranger")
    signed = make_bundle(tmp_path / "b", version=1, signing_key=keys.private_key)
    with ModelStore(tmp_path / "s", trusted_keys=[keys.public_key]) as store:
        assert store.require_signature
        v = store.install(signed, activate=True)
        assert v.key_id == keys.key_id
        assert (store.bundle_path("ctr", 1) / "signature.json").is_file()
        with pytest.raises(SignatureError, match="not signed"):
            store.install(make_bundle(tmp_path / "u", version=2))
        with pytest.raises(SignatureError, match=f"untrusted key {stranger.key_id}"):
            store.install(make_bundle(tmp_path / "x", version=3, signing_key=stranger.private_key))
        tampered = make_bundle(tmp_path / "t", version=4, signing_key=keys.private_key)
        _rewrite(tampered, metadata={"evil": True})
        with pytest.raises(SignatureError, match="altered after signing"):
            store.install(tampered)
        assert [v.version for v in store.versions()] == [1]
        _assert_serves(store, 1)
    with pytest.raises(ConfigError, match="trusted key"):
        ModelStore(tmp_path / "s2", require_signature=True)


# --- recovery -----------------------------------------------------------------------------------------------------


def test_open_removes_leftovers_and_orphans(tmp_path: Path, bundles: dict[int, Path]) -> None:
    with ModelStore(tmp_path / "s") as store:
        store.install(bundles[1], activate=True)
    root = tmp_path / "s"
    (root / "tmp" / "install-crashed").mkdir()
    (root / "tmp" / "install-crashed" / "model.onnx").write_bytes(b"half")
    orphan = root / "blobs" / ("a" * 64)
    orphan.mkdir()
    (orphan / "manifest.json").write_text("{}")
    with ModelStore(root) as store:
        assert list((root / "tmp").iterdir()) == []
        assert not orphan.exists()
        assert len(store.recovery) == 2
        _assert_serves(store, 1)


def test_corrupted_active_blob_falls_back_to_previous(tmp_path: Path, bundles: dict[int, Path]) -> None:
    with ModelStore(tmp_path / "s") as store:
        store.install(bundles[1], activate=True)
        store.install(bundles[2], activate=True)
        blob = store.bundle_path("ctr", 2)
    model = blob / "model.onnx"
    os.chmod(model, 0o644)
    _corrupt_model(blob)
    with ModelStore(tmp_path / "s") as store:
        _assert_serves(store, 1)  # the active v2 no longer verifies: v1 serves instead
        assert store.active_version("ctr") == 1
        assert store.previous_version("ctr") is None
        assert "fell back to v1" in store.recovery[-1]
        assert store.events("ctr")[0]["action"] == "fallback"


def test_corrupted_active_blob_without_previous_is_an_error(tmp_path: Path, bundles: dict[int, Path]) -> None:
    with ModelStore(tmp_path / "s") as store:
        store.install(bundles[1], activate=True)
        blob = store.bundle_path("ctr", 1)
    os.chmod(blob / "model.onnx", 0o644)
    _corrupt_model(blob)
    with ModelStore(tmp_path / "s") as store, pytest.raises(HealthCheckError, match="sha256"):
        store.active("ctr")


# --- handles and closing ------------------------------------------------------------------------------------------


def test_old_backend_closes_when_its_last_handle_goes(store: ModelStore, bundles: dict[int, Path]) -> None:
    store.install(bundles[1], activate=True)
    store.install(bundles[2])
    old = store.active("ctr")
    store.activate("ctr", 2)
    # A caller still holding the old handle finishes on the old version.
    assert not old.closed
    np.testing.assert_allclose(old.run({"x": X})["y"], expected_output(1, X), atol=1e-6)
    finalizer = old._finalizer
    del old
    gc.collect()
    assert not finalizer.alive
    _assert_serves(store, 2)


def test_closed_store(tmp_path: Path, bundles: dict[int, Path]) -> None:
    store = ModelStore(tmp_path / "s")
    store.install(bundles[1], activate=True)
    model = store.active("ctr")
    store.close()
    assert model.closed
    with pytest.raises(ModelError, match="closed"):
        model.run({"x": X})
    with pytest.raises(ModelError, match=r"s is closed"):
        store.install(bundles[2])
    store.close()


# --- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_store_commands(tmp_path: Path, bundles: dict[int, Path], capsys: pytest.CaptureFixture[str]) -> None:
    s = str(tmp_path / "cli-store")
    assert main(["models", "ls", "--store", s]) == 0
    assert "no models installed" in capsys.readouterr().out
    assert main(["models", "install", str(bundles[1]), "--store", s, "--activate"]) == 0
    assert "ctr v1 active" in capsys.readouterr().out
    assert main(["models", "install", str(bundles[2]), "--store", s]) == 0
    assert "ctr v2 installed" in capsys.readouterr().out
    assert main(["models", "activate", "ctr", "--store", s]) == 0
    assert "ctr v2 is active (was v1)" in capsys.readouterr().out
    assert main(["models", "activate", "ctr", "1", "--store", s]) == 1
    assert "older than the active v2" in capsys.readouterr().err
    assert main(["models", "rollback", "ctr", "--store", s]) == 0
    assert "rolled back to v1 (was v2)" in capsys.readouterr().out
    assert main(["models", "ls", "--store", s, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["slot"]) for r in rows] == [(1, "active"), (2, "previous")]
    assert main(["models", "ls", "--store", s]) == 0
    assert "previous" in capsys.readouterr().out
    keys = generate_keypair(tmp_path / "k")
    assert main(["models", "install", str(bundles[3]), "--store", s, "--trusted-key", str(keys.public_key)]) == 1
    assert "not signed" in capsys.readouterr().err
    assert main(["models", "activate", "nope", "--store", s]) == 1
    assert "'nope' is not installed" in capsys.readouterr().err


def test_cli_store_commands_find_the_store_of_a_device_profile(
    tmp_path: Path, bundles: dict[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = generate_keypair(tmp_path / "k")
    profile = tmp_path / "device.toml"
    profile.write_text(
        'data_dir = "data"\n[sync]\nbroker = "mqtt://localhost:1883"\ndevice_id = "d1"\n'
        f'trusted_keys = ["{keys.public_key}"]\n'
    )
    # the profile's trusted keys apply: an unsigned bundle is refused, a signed one goes into data/models
    assert main(["models", "install", str(bundles[1]), "--config", str(profile), "--activate"]) == 1
    assert "not signed" in capsys.readouterr().err
    sign_bundle(bundles[1], keys.private_key)
    assert main(["models", "install", str(bundles[1]), "--config", str(profile), "--activate"]) == 0
    capsys.readouterr()
    assert main(["models", "ls", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    assert [(r["version"], r["slot"]) for r in json.loads(capsys.readouterr().out)] == [(1, "active")]
    with pytest.raises(SystemExit):  # one place to find the store, not two
        main(["models", "ls", "--store", "x", "--data-dir", "y"])


def test_write_mlp_is_deterministic(tmp_path: Path) -> None:
    a = write_mlp(tmp_path / "a.onnx", seed=3)
    b = write_mlp(tmp_path / "b.onnx", seed=3)
    assert a.read_bytes() == b.read_bytes()


def test_a_store_database_that_is_not_sqlite_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "store.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ModelError, match="not a usable model store database"):
        ModelStore(tmp_path / "s")


def test_reads_on_another_thread_never_see_an_install_before_it_commits(
    store: ModelStore, bundles: dict[int, Path]
) -> None:
    """Status reads from another thread (an HTTP handler) used to share the writer's connection and could see
    rows of a transaction still in progress; each thread now reads on its own connection."""
    import threading

    from edge_runtime._sqlite import transaction

    store.install(bundles[1], activate=True)
    seen: list[object] = []
    inside = threading.Event()
    done = threading.Event()

    def reader() -> None:
        inside.wait(10)
        seen.append(store.active_version("ctr"))
        seen.append([v.version for v in store.versions("ctr")])
        done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    with store._writing(), transaction(store._db):
        store._db.execute("UPDATE model_slots SET active = 99 WHERE name = 'ctr'")
        assert store.active_version("ctr") == 99, "the writer sees its own uncommitted change"
        inside.set()
        assert done.wait(10)
        store._db.execute("UPDATE model_slots SET active = 1 WHERE name = 'ctr'")
    thread.join(10)
    assert seen == [1, [1]]
