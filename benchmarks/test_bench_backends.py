"""Inference backends against the raw engine call, in the same run on the same data (issue 3 targets).

For each backend x model (small 8-64-64-1 MLP, larger ~2 MB 32-512-512-512-4 MLP, and the int8 small one) x
(1 row, 100 rows): ``backend.run({"x": x})`` against the least code that gets the same answer from the engine —
``session.run(["y"], {"x": x})`` on ONNX Runtime; ``set_tensor`` / ``invoke`` / ``get_tensor`` on LiteRT, plus
the textbook quantize/dequantize numpy for int8 models. Raw and ours are timed interleaved (best of several
repeats each) so machine noise hits both; the ratio goes to ``benchmark.extra_info["ratio_vs_raw"]`` (target
<= 1.2) and pytest-benchmark times ours. Also: cold load to first result and resident memory after load (in a
fresh subprocess, from ``/proc/self/status`` VmRSS, ``resource.getrusage`` where there is no /proc).

The models are built with the test suite's builders, so no tensorflow and no committed files are needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "edge_runtime" / "models"))
from _backend_models import BuiltModel, build_all

from edge_runtime.models._backend import available_backends, open_backend

TARGET = 1.2
OVERHEAD_CASES = [
    ("onnxruntime", "onnx-small"),
    ("onnxruntime", "onnx-small-int8"),
    ("onnxruntime", "onnx-large"),
    ("litert", "tflite-small"),
    ("litert", "tflite-small-int8"),
    ("litert", "tflite-large"),
    ("tflite-runtime", "tflite-small"),
    ("tflite-runtime", "tflite-small-int8"),
    ("tflite-runtime", "tflite-large"),
]
AVAILABLE = available_backends()
_summary: list[tuple[str, float, float, float]] = []


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    built = build_all(tmp_path_factory.mktemp("bench-models"))
    yield built
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None or not _summary:
        return
    with capture.global_and_fixture_disabled():  # print past output capture, beside pytest-benchmark's table
        print("\nbackend overhead vs raw engine (best of interleaved repeats; target ratio <= 1.2)")
        print(f"{'case':<44} {'raw':>12} {'ours':>12} {'ratio':>7}")
        for name, raw, ours, ratio in _summary:
            flag = "" if ratio <= TARGET or not name.startswith("run") else "  > target"
            unit = "KiB" if "rss" in name else "us"
            print(f"{name:<44} {raw:>9.2f} {unit:<3}{ours:>9.2f} {unit:<3}{ratio:>6.3f}{flag}")


def _raw_call(model: BuiltModel, x: np.ndarray, backend_name: str) -> Callable[[], np.ndarray]:
    """The least engine code that returns the same float32 output as ``backend.run``."""
    if model.fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        feeds, names = {"x": x}, ["y"]
        return lambda: session.run(names, feeds)[0]
    if backend_name == "litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter

    it = Interpreter(model_path=str(model.path), num_threads=1)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ii, oi = inp["index"], out["index"]
    it.resize_tensor_input(ii, list(x.shape))
    it.allocate_tensors()
    if inp["dtype"] == np.float32:
        return lambda: (it.set_tensor(ii, x), it.invoke(), it.get_tensor(oi))[2]
    s, z = inp["quantization"]
    so, zo = out["quantization"]
    lo, hi = np.iinfo(inp["dtype"]).min, np.iinfo(inp["dtype"]).max
    dt = inp["dtype"]

    def quantized() -> np.ndarray:
        it.set_tensor(ii, np.clip(np.round(x / s) + z, lo, hi).astype(dt))
        it.invoke()
        return (it.get_tensor(oi).astype(np.float32) - zo) * so

    return quantized


def _interleaved(raw: Callable[[], object], ours: Callable[[], object], target_s: float = 0.005) -> tuple[float, float]:
    """Best per-call seconds of ``raw`` and of ``ours``, timed in alternating blocks."""
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.002:
        ours()
        n += 1
    number = max(1, int(n * target_s / 0.002))
    best_raw = best_ours = float("inf")
    for _ in range(25):  # many short blocks: the best ones dodge other processes' bursts on a shared machine
        for fn, which in ((raw, "raw"), (ours, "ours")):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            per_call = (time.perf_counter() - t0) / number
            if which == "raw":
                best_raw = min(best_raw, per_call)
            else:
                best_ours = min(best_ours, per_call)
    return best_raw, best_ours


@pytest.mark.parametrize("rows", [1, 100])
@pytest.mark.parametrize(("backend_name", "key"), OVERHEAD_CASES, ids=[f"{b}-{k}" for b, k in OVERHEAD_CASES])
def test_run_overhead_vs_raw(
    benchmark: Any, models: dict[str, BuiltModel], backend_name: str, key: str, rows: int
) -> None:
    if not AVAILABLE[backend_name]:
        pytest.skip(f"{backend_name} is not usable here (tflite-runtime needs numpy<2: the 'tflite' extra)")
    model = models[key]
    x = np.random.default_rng(0).standard_normal((rows, model.mlp.n_inputs)).astype(np.float32)
    backend = open_backend(model.path, backend=backend_name, threads=1)
    feeds = {"x": x}
    run = backend.run
    raw = _raw_call(model, x, backend_name)

    def ours() -> object:
        return run(feeds)

    np.testing.assert_allclose(run(feeds)["y"], raw(), rtol=1e-6, atol=1e-6 if not model.quantized else 1e-5)
    raw_s, ours_s = _interleaved(raw, ours)
    ratio = ours_s / raw_s
    benchmark.extra_info.update(
        raw_us=round(raw_s * 1e6, 3), ours_us=round(ours_s * 1e6, 3), ratio_vs_raw=round(ratio, 3), target=TARGET
    )
    _summary.append((f"run {backend_name}-{key}-{rows}row", raw_s * 1e6, ours_s * 1e6, ratio))
    benchmark(ours)
    backend.close()


COLD_CASES = [
    ("onnxruntime", "onnx-small"),
    ("onnxruntime", "onnx-large"),
    ("litert", "tflite-small"),
    ("litert", "tflite-large"),
    ("tflite-runtime", "tflite-small"),
    ("tflite-runtime", "tflite-large"),
]


@pytest.mark.parametrize(("backend_name", "key"), COLD_CASES, ids=[f"{b}-{k}" for b, k in COLD_CASES])
def test_cold_load_to_first_result(benchmark: Any, models: dict[str, BuiltModel], backend_name: str, key: str) -> None:
    """Open the model file and get the first prediction (engine library already imported)."""
    if not AVAILABLE[backend_name]:
        pytest.skip(f"{backend_name} is not usable here (tflite-runtime needs numpy<2: the 'tflite' extra)")
    model = models[key]
    x = np.random.default_rng(0).standard_normal((1, model.mlp.n_inputs)).astype(np.float32)

    def ours() -> object:
        backend = open_backend(model.path, backend=backend_name, threads=1)
        y = backend.run({"x": x})["y"]
        backend.close()
        return y

    def raw() -> object:
        return _raw_call(model, x, backend_name)()

    raw_s, ours_s = _interleaved(raw, ours, target_s=0.02)
    ratio = ours_s / raw_s
    benchmark.extra_info.update(
        raw_ms=round(raw_s * 1e3, 3), ours_ms=round(ours_s * 1e3, 3), ratio_vs_raw=round(ratio, 3)
    )
    _summary.append((f"cold load {backend_name}-{key}", raw_s * 1e6, ours_s * 1e6, ratio))
    benchmark.pedantic(ours, rounds=10, iterations=1, warmup_rounds=1)


_RSS_SCRIPT = r"""
import json, sys, resource
def rss_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak // 1024 if sys.platform == "darwin" else peak
import numpy as np
mode, path, fmt = sys.argv[1:4]
if fmt == "onnx":
    import onnxruntime as ort
else:
    from ai_edge_litert.interpreter import Interpreter
import edge_runtime.models._backend, edge_runtime.models._onnx, edge_runtime.models._tflite
before = rss_kib()
if mode == "ours":
    backend = edge_runtime.models._backend.open_backend(path, threads=1)
    spec = backend.inputs[0]
    backend.run({spec.name: np.zeros((1, spec.shape[1]), np.float32)})
elif fmt == "onnx":
    o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    s.run(None, {i.name: np.zeros((1, i.shape[1]), np.float32)})
else:
    it = Interpreter(model_path=path, num_threads=1); it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"])); it.invoke()
print(json.dumps({"before_kib": before, "after_kib": rss_kib()}))
"""


def _rss(mode: str, model: BuiltModel) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, mode, str(model.path), model.fmt],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("key", ["onnx-small", "onnx-large", "tflite-small", "tflite-large"])
def test_resident_memory_after_load(benchmark: Any, models: dict[str, BuiltModel], key: str) -> None:
    """RSS growth from loading the model and running it once, ours vs the raw engine, each in a fresh process."""
    model = models[key]
    raw = _rss("raw", model)
    ours = benchmark.pedantic(lambda: _rss("ours", model), rounds=1, iterations=1)
    raw_delta = raw["after_kib"] - raw["before_kib"]
    ours_delta = ours["after_kib"] - ours["before_kib"]
    benchmark.extra_info.update(
        raw_rss_after_kib=raw["after_kib"],
        ours_rss_after_kib=ours["after_kib"],
        raw_load_delta_kib=raw_delta,
        ours_load_delta_kib=ours_delta,
        model_file_kib=model.path.stat().st_size // 1024,
        ratio_vs_raw=round(ours["after_kib"] / raw["after_kib"], 3),
    )
    _summary.append(
        (f"rss after load {key}", raw["after_kib"], ours["after_kib"], ours["after_kib"] / raw["after_kib"])
    )
