"""The contract every inference backend keeps, run over every available backend x model.

Models are built by conftest.py from known weights, so a numpy forward pass is the reference. Models committed
under ``models/`` are added when present; their reference is agreement between single-row and batched runs and,
for models in one directory with the same signature, agreement across files (fp32 vs int8, ONNX vs TFLite).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from _backend_models import BuiltModel, committed_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_runtime._errors import BundleError, ModelError, ModelInputError
from edge_runtime.models._backend import InferenceBackend, TensorSpec, available_backends, open_backend

AVAILABLE = available_backends()
BUILT_CASES = [
    ("onnxruntime", "onnx-small"),
    ("onnxruntime", "onnx-small-int8"),
    ("onnxruntime", "onnx-large"),
    *[
        (backend, key)
        for backend in ("litert", "tflite-runtime")
        for key in ("tflite-small", "tflite-small-int8", "tflite-small-uint8", "tflite-large")
    ],
]
_UNAVAILABLE = "backend library not installed or unusable here (tflite-runtime needs numpy<2: the 'tflite' extra)"


def _param(backend: str, key: str) -> object:
    marks = [] if AVAILABLE.get(backend) else [pytest.mark.skip(reason=f"{backend}: {_UNAVAILABLE}")]
    return pytest.param((backend, key), id=f"{backend}-{key}", marks=marks)


@dataclasses.dataclass
class Case:
    backend_name: str
    model: BuiltModel
    backend: InferenceBackend
    closed: bool = False

    def inputs(self, rows: int, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((rows, self.model.mlp.n_inputs)).astype(np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return self.model.mlp.forward(x)


@pytest.fixture(params=[_param(b, k) for b, k in BUILT_CASES])
def case(request: pytest.FixtureRequest, built_models: dict[str, BuiltModel]) -> object:
    backend_name, key = request.param
    model = built_models[key]
    backend = open_backend(model.path, backend=backend_name, threads=1)
    c = Case(backend_name, model, backend)
    yield c
    if not c.closed:
        # Whatever the test did (bad feeds included), the backend must still serve correct results.
        x = c.inputs(3, seed=9)
        np.testing.assert_allclose(backend.run({"x": x})["y"], c.reference(x), atol=model.atol, rtol=1e-4)
    backend.close()


class TestBackendContract:
    def test_is_an_inference_backend(self, case: Case) -> None:
        assert isinstance(case.backend, InferenceBackend)
        assert case.backend.name == case.backend_name

    def test_reports_input_and_output_specs(self, case: Case) -> None:
        mlp, q = case.model.mlp, case.model.quantized
        (inp,) = case.backend.inputs
        (out,) = case.backend.outputs
        assert isinstance(inp, TensorSpec)
        assert (inp.name, inp.shape, inp.dtype) == ("x", (None, mlp.n_inputs), np.dtype(np.float32))
        assert (out.name, out.shape, out.dtype) == ("y", (None, mlp.n_outputs), np.dtype(np.float32))
        expected_raw = np.dtype(q) if q else np.dtype(np.float32)
        assert inp.raw_dtype == expected_raw
        assert out.raw_dtype == expected_raw
        if q:
            assert inp.quantization is not None
            assert inp.quantization[0] > 0
            assert out.quantization is not None
        else:
            assert inp.quantization is None
            assert out.quantization is None

    @pytest.mark.parametrize("rows", [1, 100])
    def test_outputs_match_the_numpy_reference(self, case: Case, rows: int) -> None:
        x = case.inputs(rows)
        result = case.backend.run({"x": x})
        assert list(result) == ["y"]
        y = result["y"]
        assert y.shape == (rows, case.model.mlp.n_outputs)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, case.reference(x), atol=case.model.atol, rtol=1e-4)

    def test_batch_sizes_can_change_between_calls(self, case: Case) -> None:
        x = case.inputs(100, seed=5)
        batched = case.backend.run({"x": x})["y"]
        for size in (1, 7, 100, 1, 3):
            part = case.backend.run({"x": x[:size]})["y"]
            np.testing.assert_allclose(part, batched[:size], atol=case.model.batch_atol)
        single = np.vstack([case.backend.run({"x": x[i : i + 1]})["y"] for i in range(10)])
        np.testing.assert_allclose(single, batched[:10], atol=case.model.batch_atol)

    def test_an_empty_batch_gives_empty_outputs(self, case: Case) -> None:
        out = case.backend.run({"x": np.zeros((0, case.model.mlp.n_inputs), np.float32)})["y"]
        assert out.shape == (0, case.model.mlp.n_outputs)
        assert out.dtype == np.float32

    def test_results_are_not_overwritten_by_the_next_call(self, case: Case) -> None:
        first = case.backend.run({"x": case.inputs(4, seed=1)})["y"]
        kept = first.copy()
        case.backend.run({"x": case.inputs(4, seed=2)})
        np.testing.assert_array_equal(first, kept)

    def test_float64_is_cast_to_float32(self, case: Case) -> None:
        x = case.inputs(5)
        np.testing.assert_allclose(
            case.backend.run({"x": x.astype(np.float64)})["y"], case.backend.run({"x": x})["y"], atol=1e-6
        )

    def test_non_contiguous_and_list_inputs_work(self, case: Case) -> None:
        x = case.inputs(6)
        expected = case.backend.run({"x": x})["y"]
        np.testing.assert_allclose(case.backend.run({"x": np.asfortranarray(x)})["y"], expected, atol=1e-6)
        wide = np.repeat(x, 2, axis=0)[::2]  # a strided view
        np.testing.assert_allclose(case.backend.run({"x": wide})["y"], expected, atol=1e-6)
        np.testing.assert_allclose(case.backend.run({"x": x.tolist()})["y"], expected, atol=1e-6)

    def test_missing_input_names_it(self, case: Case) -> None:
        with pytest.raises(ModelInputError, match=r"missing input 'x'.*x: float32\[None, \d+\]") as info:
            case.backend.run({"features": case.inputs(1)})
        assert info.value.input_name == "x"
        with pytest.raises(ModelInputError, match="missing input 'x'"):
            case.backend.run({})

    def test_unknown_extra_input_is_refused(self, case: Case) -> None:
        with pytest.raises(ModelInputError, match="unknown input 'extra'") as info:
            case.backend.run({"x": case.inputs(1), "extra": case.inputs(1)})
        assert info.value.input_name == "extra"

    @pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_, np.complex64, object])
    def test_wrong_dtype_is_refused(self, case: Case, dtype: type) -> None:
        x: np.ndarray = case.inputs(2).astype(dtype)
        with pytest.raises(ModelInputError, match=r"input 'x' has dtype .*expected float32") as info:
            case.backend.run({"x": x})
        assert info.value.input_name == "x"

    def test_missing_batch_dimension_is_refused_with_a_hint(self, case: Case) -> None:
        with pytest.raises(ModelInputError, match=r"\(rank 1\), expected rank 2.*add the batch dimension"):
            case.backend.run({"x": case.inputs(1)[0]})

    def test_wrong_feature_count_is_refused(self, case: Case) -> None:
        n = case.model.mlp.n_inputs
        x = np.zeros((3, n + 1), dtype=np.float32)
        with pytest.raises(ModelInputError, match=rf"shape \(3, {n + 1}\), but dimension 1 must be {n}"):
            case.backend.run({"x": x})
        # the backend still serves after refusing bad input
        np.testing.assert_allclose(
            case.backend.run({"x": case.inputs(2)})["y"],
            case.reference(case.inputs(2)),
            atol=case.model.atol,
            rtol=1e-4,
        )

    def test_run_after_close_raises(self, case: Case) -> None:
        case.backend.close()
        case.closed = True
        with pytest.raises(ModelError, match="closed"):
            case.backend.run({"x": case.inputs(1)})

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        rows=st.integers(0, 5),
        cols=st.integers(0, 10),
        rank=st.integers(0, 3),
        dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int8, np.uint8, np.bool_]),
        name=st.sampled_from(["x", "y", "X"]),
    )
    def test_any_feed_gives_a_result_or_a_model_input_error(
        self, case: Case, rows: int, cols: int, rank: int, dtype: type, name: str
    ) -> None:
        shape = (rows, cols, 1)[:rank]
        try:
            out = case.backend.run({name: np.ones(shape, dtype=dtype)})
        except ModelInputError as exc:
            error: ModelInputError | None = exc
        else:
            error = None
        if error is not None:
            assert error.input_name in ("x", name)
            return
        # accepted: only a float batch of the right width under the right name
        assert name == "x"
        assert shape[1:] == (case.model.mlp.n_inputs,)
        assert np.dtype(dtype).kind == "f"
        assert out["y"].shape == (rows, case.model.mlp.n_outputs)

    def test_concurrent_calls_on_a_thread_safe_backend(self, case: Case) -> None:
        if not getattr(case.backend, "thread_safe", False):
            pytest.skip(f"{case.backend_name} is not thread-safe; the model store serialises its calls")
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                for i in range(50):
                    x = case.inputs(1 + (seed + i) % 7, seed=seed)
                    y = case.backend.run({"x": x})["y"]
                    np.testing.assert_allclose(y, case.reference(x), atol=case.model.atol, rtol=1e-4)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []

    @pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing", "flipped-header"])
    def test_a_damaged_model_file_gives_a_bundle_error(self, case: Case, tmp_path: Path, damage: str) -> None:
        path = tmp_path / case.model.path.name
        data = case.model.path.read_bytes()
        if damage == "truncated":
            path.write_bytes(data[: len(data) // 3])
        elif damage == "garbage":
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif damage == "empty":
            path.write_bytes(b"")
        elif damage == "flipped-header":
            path.write_bytes(bytes(b ^ 0xFF for b in data[:16]) + data[16:])
        with pytest.raises(BundleError) as info:
            open_backend(path, backend=case.backend_name)
        assert info.value.path == str(path)
        if damage == "missing":
            assert "not found" in str(info.value)
        else:
            assert "cannot load" in str(info.value) or "not a valid" in str(info.value)


# --- committed models ---------------------------------------------------------------------------------------

COMMITTED = [
    *[pytest.param(("onnxruntime", p), id=f"onnxruntime-{p.parent.name}-{p.name}") for p in committed_models(".onnx")],
    *[
        pytest.param(
            (b, p),
            id=f"{b}-{p.parent.name}-{p.name}",
            marks=[] if AVAILABLE.get(b) else [pytest.mark.skip(reason=f"{b}: {_UNAVAILABLE}")],
        )
        for p in committed_models(".tflite")
        for b in ("litert", "tflite-runtime")
    ],
]


def _representable(spec: TensorSpec) -> tuple[float, float]:
    """The float range a quantized input can carry (values beyond it are clipped by quantization)."""
    if spec.quantization is None:
        return -np.inf, np.inf
    scale, zero_point = spec.quantization
    info = np.iinfo(spec.raw_dtype)
    return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def _feed(spec: TensorSpec, rows: int, seed: int = 3, clip: tuple[float, float] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = tuple(rows if d is None else d for d in spec.shape)
    if spec.dtype.kind == "f":
        # Committed models take standardised features; stay inside what every variant's input can represent.
        lo, hi = clip or _representable(spec)
        return np.clip(rng.standard_normal(shape), lo, hi).astype(spec.dtype)
    return rng.integers(0, 5, shape).astype(spec.dtype)


@pytest.mark.skipif(not COMMITTED, reason="no *.onnx / *.tflite committed under models/ yet")
@pytest.mark.parametrize("committed", COMMITTED or [pytest.param(None, id="none")])
def test_committed_model_keeps_the_contract(committed: tuple[str, Path]) -> None:
    backend_name, path = committed
    backend = open_backend(path, backend=backend_name, threads=1)
    try:
        assert backend.inputs
        assert backend.outputs
        batch = {s.name: _feed(s, 20) for s in backend.inputs}
        out = backend.run(batch)
        assert list(out) == [s.name for s in backend.outputs]
        for spec in backend.outputs:
            assert out[spec.name].shape[0] == 20
            assert np.all(np.isfinite(out[spec.name]))
        one = backend.run({k: v[:1] for k, v in batch.items()})
        # Dynamic quantization picks activation ranges per batch, so a row may move by a quantization step.
        tol = 0.05 if _looks_quantized(path, backend) else 1e-4
        for name, value in one.items():
            np.testing.assert_allclose(value, out[name][:1], rtol=tol, atol=tol)
        with pytest.raises(ModelInputError):
            backend.run({})
    finally:
        backend.close()


def _looks_quantized(path: Path, backend: InferenceBackend) -> bool:
    return "int8" in str(path) or any(s.quantization for s in backend.inputs)


def _signature(backend: InferenceBackend) -> tuple[object, ...]:
    return tuple((s.shape, s.dtype) for s in backend.inputs) + tuple((s.shape,) for s in backend.outputs)


def _committed_groups() -> list[list[Path]]:
    """Committed model files grouped by model name: the bundle directory's name up to its first '-'
    (``ctr-onnx-fp32`` and ``ctr-tflite-int8`` are both ``ctr``)."""
    by_name: dict[str, list[Path]] = {}
    for p in committed_models(".onnx") + committed_models(".tflite"):
        by_name.setdefault(p.parent.name.split("-")[0], []).append(p)
    return [files for files in by_name.values() if len(files) > 1]


@pytest.mark.skipif(not _committed_groups(), reason="no model under models/ has several committed variants yet")
def test_committed_variants_of_one_model_agree_across_formats_and_quantization() -> None:
    """fp32 variants must agree to 1e-4; a quantized one within 10% of the fp32 output range (+0.02)."""
    for files in _committed_groups():
        opened = {}
        for p in files:
            try:
                opened[p] = open_backend(p, threads=1)
            except Exception as exc:  # pragma: no cover - reported, not hidden
                pytest.fail(f"{p}: {exc}")
        groups: dict[tuple[object, ...], list[Path]] = {}
        for p, backend in opened.items():
            groups.setdefault(_signature(backend), []).append(p)
        for paths in groups.values():
            quantized = {p: _looks_quantized(p, opened[p]) for p in paths}
            anchor = next((p for p in paths if not quantized[p]), paths[0])
            ranges = [_representable(s) for p in paths for s in opened[p].inputs]
            clip = (max(r[0] for r in ranges), min(r[1] for r in ranges))
            feed = {s.name: _feed(s, 50, clip=clip) for s in opened[anchor].inputs}
            ref = opened[anchor].run(feed)
            for p in paths:
                got = opened[p].run(feed)
                for name, value in ref.items():
                    other = got[name] if name in got else next(iter(got.values()))
                    span = float(np.ptp(value)) or 1.0
                    atol = 0.1 * span + 0.02 if quantized[p] else 1e-4
                    np.testing.assert_allclose(other, value, atol=atol, rtol=1e-3, err_msg=f"{p} vs {anchor}")
        for backend in opened.values():
            backend.close()


def test_copying_a_model_keeps_it_loadable(built_models: dict[str, BuiltModel], tmp_path: Path) -> None:
    """An open backend keeps serving after its file is unlinked (the store replaces files by rename)."""
    src = built_models["tflite-small"].path
    copy = Path(shutil.copy(src, tmp_path / "copy.tflite"))
    backend = open_backend(copy, threads=1)
    copy.unlink()
    x = np.ones((2, 8), dtype=np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], built_models["tflite-small"].mlp.forward(x), atol=1e-4)
    backend.close()


_BOTH_TFLITE = AVAILABLE.get("litert") and AVAILABLE.get("tflite-runtime")


@pytest.mark.skipif(not _BOTH_TFLITE, reason=f"needs both litert and tflite-runtime ({_UNAVAILABLE})")
def test_litert_and_tflite_runtime_agree_on_every_tflite_model(built_models: dict[str, BuiltModel]) -> None:
    paths = [m.path for m in built_models.values() if m.fmt == "tflite"] + committed_models(".tflite")
    for path in paths:
        a = open_backend(path, backend="litert", threads=1)
        b = open_backend(path, backend="tflite-runtime", threads=1)
        assert a.inputs == b.inputs
        assert a.outputs == b.outputs
        feed = {s.name: _feed(s, 64) for s in a.inputs}
        theirs = b.run(feed)
        for spec in a.outputs:
            # Integer kernels may round differently between engine versions, and a step lost in one layer moves
            # the next: allow a few output steps per row but at most one step on average.
            ours = a.run(feed)[spec.name]
            step = spec.quantization[0] if spec.quantization else 0.01 if _looks_quantized(path, a) else 2.5e-6
            np.testing.assert_allclose(theirs[spec.name], ours, atol=4 * step, err_msg=str(path))
            assert float(np.mean(np.abs(theirs[spec.name] - ours))) <= step, path
        a.close()
        b.close()
