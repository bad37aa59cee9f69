"""The store with the committed example bundles (models/): ONNX and TFLite, fp32 and int8, including swaps on a
TFLite interpreter, which is not thread-safe and is therefore called under the model's lock."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import ModelStore
from edge_runtime.models import Manifest, package_bundle, verify_bundle

MODELS = Path(__file__).resolve().parents[3] / "models"
COMMITTED = sorted(p.parent for p in MODELS.glob("ctr-*/manifest.json"))

pytestmark = pytest.mark.skipif(not COMMITTED, reason="models/ has no committed bundles yet")


@pytest.mark.parametrize("bundle", COMMITTED, ids=lambda p: p.name)
def test_committed_bundles_install_activate_and_serve(tmp_path: Path, bundle: Path) -> None:
    manifest = verify_bundle(bundle)
    with ModelStore(tmp_path / "store") as store:
        store.install(bundle, activate=True)
        model = store.active(manifest.name)
        assert model.manifest == manifest
        check = manifest.health_check
        assert check is not None
        outputs = model.run(check.input_arrays(manifest.inputs))
        for name, want in check.expected_arrays().items():
            np.testing.assert_allclose(outputs[name], want, rtol=0, atol=check.atol)


def test_tflite_fp32_to_int8_swaps_under_load(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    sources = {1: MODELS / "ctr-tflite-fp32", 2: MODELS / "ctr-tflite-int8"}
    if not all((p / "manifest.json").is_file() for p in sources.values()):
        pytest.skip("committed TFLite bundles are missing")
    x = np.random.default_rng(3).standard_normal((8, 8)).astype(np.float32)
    with ModelStore(tmp_path / "store") as store:
        for version, src in sources.items():
            m = Manifest.load(src / "manifest.json")
            assert m.health_check is not None
            bundle = package_bundle(
                src / m.model_file,
                tmp_path / f"ctr-v{version}",
                name="ctr",
                version=version,
                inputs=m.inputs,
                outputs=m.outputs,
                features=m.features,
                quantization=m.quantization,
                health_check=m.health_check,
            )
            store.install(bundle)
        refs = {}
        for version in (1, 2):
            model = store.activate("ctr", version, allow_downgrade=True)
            assert model._lock is not None  # a TFLite interpreter is serialised
            refs[version] = model.run({"features": x})["probability"]
        assert not np.array_equal(refs[1], refs[2])
        problems: list[str] = []
        stop = threading.Event()

        def worker() -> None:
            while not stop.is_set():
                try:
                    model = store.active("ctr")
                    y = model.run({"features": x})["probability"]
                except Exception as exc:
                    problems.append(repr(exc))
                    return
                matches = [v for v, ref in refs.items() if np.array_equal(y, ref)]
                if matches != [model.version]:
                    problems.append(f"v{model.version} gave output matching {matches}")
                    return

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for _ in range(10):
                store.rollback("ctr")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert problems == []
