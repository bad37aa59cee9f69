"""Atomic swaps: threads keep predicting while versions are activated and rolled back; every call succeeds and
every result is exactly one version's output."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _model_factory import expected_output, make_bundle, sample_inputs

from edge_runtime import ModelStore

X = sample_inputs(5)


def _hammer(store: ModelStore, swaps: int, threads: int = 3) -> tuple[dict[int, int], list[str]]:
    expected = {v: expected_output(v, X) for v in (1, 2)}
    seen = {1: 0, 2: 0}
    problems: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        local = {1: 0, 2: 0}
        while not stop.is_set():
            try:
                model = store.active("ctr")
                y = model.run({"x": X})["y"]
            except Exception as exc:  # any failure during a swap is a bug
                with lock:
                    problems.append(f"{type(exc).__name__}: {exc}")
                return
            matches = [v for v, want in expected.items() if np.allclose(y, want, rtol=0, atol=1e-6)]
            if matches != [model.version]:
                with lock:
                    problems.append(f"handle v{model.version} produced output matching {matches}")
                return
            local[model.version] += 1
        with lock:
            for v, n in local.items():
                seen[v] += n

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        for i in range(swaps):
            if i % 2 == 0:
                store.activate("ctr", 2)
            else:
                store.rollback("ctr")
            time.sleep(0.005)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    return seen, problems


def test_predictions_never_fail_or_mix_versions_during_swaps(tmp_path: Path) -> None:
    with ModelStore(tmp_path / "store") as store:
        store.install(make_bundle(tmp_path / "b", version=1), activate=True)
        store.install(make_bundle(tmp_path / "b", version=2))
        seen, problems = _hammer(store, swaps=40)
        assert problems == []
        assert seen[1] > 0
        assert seen[2] > 0
        # 40 swaps = 20 activations of v2 and 20 rollbacks to v1, each recorded.
        actions = [e["action"] for e in store.events("ctr", limit=100)]
        assert actions.count("rollback") == 20
        assert actions.count("activate") == 21


def test_swaps_with_a_serialised_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Backends that are not thread-safe (TFLite interpreters) get a per-model lock; swaps stay clean."""
    from edge_runtime.models._onnx import OnnxBackend

    # Treat ONNX Runtime as if it were not thread-safe, so the store must serialise its calls.
    monkeypatch.setattr(OnnxBackend, "thread_safe", False)
    with ModelStore(tmp_path / "store") as store:
        store.install(make_bundle(tmp_path / "b", version=1), activate=True)
        store.install(make_bundle(tmp_path / "b", version=2))
        assert store.active("ctr")._lock is not None
        seen, problems = _hammer(store, swaps=20)
        assert problems == []
        assert seen[1] > 0
        assert seen[2] > 0
