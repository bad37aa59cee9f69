"""Crash safety: a process killed with SIGKILL at any point of install/activate/rollback leaves a store whose
restart finds a complete, verified active model."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _model_factory import expected_output, make_bundle, sample_inputs

from edge_runtime import ModelStore
from edge_runtime.models._fsutil import sha256_file
from edge_runtime.models._store_util import PAUSE_ENV

X = sample_inputs()

# The child installs and activates v2 (then rolls back), or loops over versions forever for the random kills.
CHILD = r"""
import sys
from edge_runtime import ModelStore
store_dir, mode, *bundles = sys.argv[1:]
store = ModelStore(store_dir)
if mode == "once":
    store.install(bundles[0], activate=True)
    store.rollback("ctr")
    print("DONE", flush=True)
else:
    i = 0
    while True:
        i += 1
        b = bundles[i % len(bundles)]
        store.install(b, allow_downgrade=True)
        from edge_runtime.models import Bundle
        version = Bundle.open(b).manifest.version if not b.endswith(".tar.gz") else None
        store.activate("ctr", version, allow_downgrade=True)
        if i % 3 == 0:
            store.rollback("ctr")
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(root, version=v) for v in (1, 2, 3, 4)}


def _fresh_store(path: Path, bundles: dict[int, Path]) -> Path:
    with ModelStore(path) as store:
        store.install(bundles[1], activate=True)
    return path


def _spawn(store: Path, mode: str, bundles: list[Path], pause: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), mode, *map(str, bundles)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _assert_healthy_after_restart(path: Path, allowed: set[int]) -> int:
    with ModelStore(path) as store:
        assert list((path / "tmp").iterdir()) == []
        recorded = {v.digest for v in store.versions()}
        assert {p.name for p in (path / "blobs").iterdir()} == recorded
        model = store.active("ctr")
        assert model.version in allowed
        np.testing.assert_allclose(model.run({"x": X})["y"], expected_output(model.version, X), rtol=0, atol=1e-6)
        manifest = model.manifest
        assert sha256_file(model.path / manifest.model_file) == (manifest.sha256, manifest.size)
        return model.version


@pytest.mark.parametrize(
    ("step", "after"),
    [
        ("install:verified", {1}),
        ("install:renamed", {1}),
        ("install:recorded", {1}),
        ("activate:verified", {1}),
        ("activate:healthy", {1}),
        ("activate:committed", {2}),
        ("rollback:committed", {1}),
    ],
)
def test_kill_at_each_step(tmp_path: Path, bundles: dict[int, Path], step: str, after: set[int]) -> None:
    store = _fresh_store(tmp_path / "store", bundles)
    child = _spawn(store, "once", [bundles[2]], pause=step)
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        assert line.strip() == f"PAUSED {step}", line + child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert child.returncode == -signal.SIGKILL
    assert _assert_healthy_after_restart(store, {1, 2}) in after
    # The store keeps working: the interrupted operation can simply be repeated.
    with ModelStore(store) as s:
        s.install(bundles[2], activate=True, allow_downgrade=True)
        assert s.active("ctr").version == 2


def test_child_without_pause_completes(tmp_path: Path, bundles: dict[int, Path]) -> None:
    store = _fresh_store(tmp_path / "store", bundles)
    child = _spawn(store, "once", [bundles[2]])
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.strip() == "DONE"
    assert _assert_healthy_after_restart(store, {1}) == 1


def test_kill_at_random_moments(tmp_path: Path, bundles: dict[int, Path]) -> None:
    rng = random.Random(1234)
    store = _fresh_store(tmp_path / "store", bundles)
    versions = set()
    for _ in range(6):
        child = _spawn(store, "loop", [bundles[2], bundles[3], bundles[4], bundles[1]])
        time.sleep(rng.uniform(0.4, 1.2))  # the child spends ~0.2 s importing, then cycles through versions
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        versions.add(_assert_healthy_after_restart(store, {1, 2, 3, 4}))
    assert versions  # every restart served a verified version


def test_a_second_process_waits_for_the_writer_and_then_recovers(tmp_path: Path, bundles: dict[int, Path]) -> None:
    import threading

    store = _fresh_store(tmp_path / "store", bundles)
    child = _spawn(store, "once", [bundles[2]], pause="install:renamed")
    opened = threading.Event()
    recovery: list[str] = []

    def open_store() -> None:
        with ModelStore(store) as s:
            recovery.extend(s.recovery)
            opened.set()

    opener = threading.Thread(target=open_store)
    try:
        assert child.stderr is not None
        assert child.stderr.readline().strip() == "PAUSED install:renamed"
        opener.start()
        # The child holds the writer lock with an unrecorded blob in place: opening must wait, not delete it.
        assert not opened.wait(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    assert opened.wait(30)
    opener.join(timeout=30)
    assert any("unrecorded blob" in r for r in recovery)
    assert _assert_healthy_after_restart(store, {1}) == 1
