"""Backend registry, availability, and behaviour specific to one engine (multi-input ONNX, quantized TFLite)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _backend_models import BuiltModel, write_onnx_two_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime._errors import BackendUnavailableError, BundleError, ConfigError, ModelError, ModelInputError
from edge_runtime.models._backend import (
    BACKENDS,
    TensorSpec,
    available_backends,
    backend_class,
    coerce_input,
    open_backend,
)
from edge_runtime.models._flatbuffer import flatbuffer_problem
from edge_runtime.models._onnx import OnnxBackend
from edge_runtime.models._tflite import LiteRTBackend, TfliteRuntimeBackend

TFLITE_HINT = "pip install 'edge-runtime[tflite]' (pins numpy<2)"


def _tflite_runtime_usable() -> bool:
    return importlib.util.find_spec("tflite_runtime") is not None and int(np.__version__.split(".")[0]) < 2


# --- registry and availability ------------------------------------------------------------------------------


def test_available_backends_reports_every_registered_backend() -> None:
    available = available_backends()
    assert set(available) == set(BACKENDS)
    assert available["onnxruntime"] is True
    assert available["litert"] is (importlib.util.find_spec("ai_edge_litert") is not None)
    assert available["tflite-runtime"] is _tflite_runtime_usable()


@pytest.mark.skipif(_tflite_runtime_usable(), reason="tflite-runtime is installed and usable here")
def test_tflite_runtime_absence_is_a_backend_unavailable_error_with_the_install_hint(
    built_models: dict[str, BuiltModel],
) -> None:
    with pytest.raises(BackendUnavailableError) as info:
        open_backend(built_models["tflite-small"].path, backend="tflite-runtime")
    assert info.value.backend == "tflite-runtime"
    assert info.value.hint == TFLITE_HINT
    assert TFLITE_HINT in str(info.value)
    assert TfliteRuntimeBackend.is_available() is False


def test_tflite_runtime_under_numpy_2_is_refused_before_it_can_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """tflite-runtime 2.14 imports under numpy 2 but fails at interpreter creation (_ARRAY_API not found)."""
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    monkeypatch.setattr(np, "__version__", "2.1.0")
    assert TfliteRuntimeBackend._numpy_compatible() is False  # no tflite-runtime distribution metadata
    with pytest.raises(BackendUnavailableError, match=r"built for numpy 1\.x") as info:
        TfliteRuntimeBackend("whatever.tflite")
    assert info.value.hint == TFLITE_HINT


def test_numpy_abi_failure_at_interpreter_creation_becomes_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch, built_models: dict[str, BuiltModel]
) -> None:
    def crash(**kwargs: object) -> None:
        raise AttributeError("_ARRAY_API not found")

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = crash  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    monkeypatch.setattr(TfliteRuntimeBackend, "_numpy_compatible", classmethod(lambda cls: True))
    with pytest.raises(BackendUnavailableError, match="_ARRAY_API") as info:
        TfliteRuntimeBackend(built_models["tflite-small"].path)
    assert info.value.hint == TFLITE_HINT


def test_open_backend_picks_the_engine_from_the_suffix(built_models: dict[str, BuiltModel]) -> None:
    onnx = open_backend(built_models["onnx-small"].path)
    tflite = open_backend(built_models["tflite-small"].path)
    assert isinstance(onnx, OnnxBackend)
    assert onnx.name == "onnxruntime"
    assert isinstance(tflite, LiteRTBackend)
    assert tflite.name == "litert"
    onnx.close()
    tflite.close()


def test_open_backend_with_an_explicit_format(built_models: dict[str, BuiltModel], tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(built_models["onnx-small"].path.read_bytes())
    backend = open_backend(path, fmt="onnx")
    assert backend.name == "onnxruntime"
    backend.close()
    with pytest.raises(BackendUnavailableError, match="cannot tell the format"):
        open_backend(path)
    with pytest.raises(BackendUnavailableError, match="unknown model format 'pt'"):
        open_backend(path, fmt="pt")


def test_unknown_backend_lists_the_known_ones(built_models: dict[str, BuiltModel]) -> None:
    with pytest.raises(BackendUnavailableError, match="no such backend") as info:
        open_backend(built_models["onnx-small"].path, backend="tensorrt")
    assert info.value.hint is not None
    for name in BACKENDS:
        assert name in info.value.hint
    with pytest.raises(BackendUnavailableError):
        backend_class("tensorrt")


def test_a_backend_for_another_format_is_refused(built_models: dict[str, BuiltModel]) -> None:
    with pytest.raises(BackendUnavailableError, match="cannot run tflite models") as info:
        open_backend(built_models["tflite-small"].path, backend="onnxruntime")
    assert info.value.hint == "use one of: litert, tflite-runtime"


@pytest.mark.parametrize("threads", [0, -1, "2", 1.5, True])
def test_bad_thread_counts_are_config_errors(built_models: dict[str, BuiltModel], threads: object) -> None:
    for key in ("onnx-small", "tflite-small"):
        with pytest.raises(ConfigError, match="thread count"):
            open_backend(built_models[key].path, threads=threads)  # type: ignore[arg-type]


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_thread_counts_are_accepted(built_models: dict[str, BuiltModel], threads: int | None) -> None:
    x = np.ones((3, 8), dtype=np.float32)
    for key in ("onnx-small", "tflite-small"):
        backend = open_backend(built_models[key].path, threads=threads)
        np.testing.assert_allclose(backend.run({"x": x})["y"], built_models[key].mlp.forward(x), atol=1e-4)
        backend.close()


def test_importing_the_backends_does_not_import_an_engine() -> None:
    code = (
        "import sys, edge_runtime.models._backend, edge_runtime.models._onnx, edge_runtime.models._tflite\n"
        "heavy = [m for m in ('onnxruntime', 'ai_edge_litert', 'tflite_runtime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_and_tflite_builds_of_one_network_agree(built_models: dict[str, BuiltModel]) -> None:
    x = np.random.default_rng(4).standard_normal((50, 8)).astype(np.float32)
    outputs = {}
    for key in ("onnx-small", "tflite-small", "onnx-small-int8", "tflite-small-int8", "tflite-small-uint8"):
        backend = open_backend(built_models[key].path, threads=1)
        outputs[key] = backend.run({"x": x})["y"]
        backend.close()
    np.testing.assert_allclose(outputs["onnx-small"], outputs["tflite-small"], atol=1e-5)
    for key in ("onnx-small-int8", "tflite-small-int8", "tflite-small-uint8"):
        np.testing.assert_allclose(outputs[key], outputs["onnx-small"], atol=0.15)
    # int8 and uint8 TFLite builds of the same scales are the same integer arithmetic shifted by 128
    np.testing.assert_allclose(outputs["tflite-small-int8"], outputs["tflite-small-uint8"], atol=1e-6)


# --- quantized TFLite ---------------------------------------------------------------------------------------


@pytest.fixture(params=["tflite-small-int8", "tflite-small-uint8"])
def quantized(request: pytest.FixtureRequest, built_models: dict[str, BuiltModel]) -> object:
    backend = open_backend(built_models[request.param].path, backend="litert", threads=1)
    yield backend
    backend.close()


def test_quantized_io_uses_the_tensor_scale_and_zero_point(quantized: LiteRTBackend) -> None:
    (inp,), (out,) = quantized.inputs, quantized.outputs
    assert inp.quantization is not None
    assert out.quantization is not None
    x = np.random.default_rng(2).standard_normal((20, 8)).astype(np.float32)
    scale, zp = inp.quantization
    info = np.iinfo(inp.raw_dtype)
    q = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp.raw_dtype)
    raw = quantized.run({"x": q}, raw=True)["y"]
    assert raw.dtype == out.raw_dtype
    oscale, ozp = out.quantization
    expected = (raw.astype(np.float32) - ozp) * oscale
    floats = quantized.run({"x": x})["y"]
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, expected, atol=1e-6)


def test_raw_mode_takes_only_the_engine_dtype(quantized: LiteRTBackend) -> None:
    raw_dtype = quantized.inputs[0].raw_dtype
    with pytest.raises(ModelInputError, match=rf"expected {raw_dtype}.*x: {raw_dtype}\[None, 8\]"):
        quantized.run({"x": np.zeros((2, 8), dtype=np.float32)}, raw=True)
    with pytest.raises(ModelInputError, match=f"expected {raw_dtype}"):
        quantized.run({"x": np.zeros((2, 8), dtype=np.int16)}, raw=True)


def test_out_of_range_floats_saturate_instead_of_wrapping(quantized: LiteRTBackend) -> None:
    scale, zp = quantized.inputs[0].quantization  # type: ignore[misc]
    info = np.iinfo(quantized.inputs[0].raw_dtype)
    top = (info.max - zp) * scale
    huge = np.full((1, 8), 1e6, dtype=np.float32)
    edge = np.full((1, 8), top, dtype=np.float32)
    np.testing.assert_array_equal(quantized.run({"x": huge})["y"], quantized.run({"x": edge})["y"])


def test_tensors_are_reallocated_only_when_the_batch_size_changes(
    built_models: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = open_backend(built_models["tflite-small"].path, threads=1)
    assert isinstance(backend, LiteRTBackend)
    calls: list[int] = []
    allocate = backend._allocate

    def counting() -> object:
        calls.append(1)
        return allocate()

    monkeypatch.setattr(backend, "_allocate", counting)
    x = np.ones((100, 8), dtype=np.float32)
    for _ in range(3):
        backend.run({"x": x})
    assert len(calls) == 1
    backend.run({"x": x[:1]})
    backend.run({"x": x[:1]})
    assert len(calls) == 2
    empty = backend.run({"x": x[:0]})["y"]
    assert empty.shape == (0, 1)
    assert empty.dtype == np.float32
    assert len(calls) == 2  # an empty batch never reaches the engine
    np.testing.assert_allclose(
        backend.run({"x": x[:1]})["y"], built_models["tflite-small"].mlp.forward(x[:1]), atol=1e-4
    )
    backend.close()


def test_the_public_interpreter_api_works_when_the_wrapper_is_missing(built_models: dict[str, BuiltModel]) -> None:
    """If a release renames the pybind wrapper, the backend falls back to Interpreter's public methods."""
    backend = open_backend(built_models["tflite-small-int8"].path, threads=1)
    assert isinstance(backend, LiteRTBackend)
    x = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    fast = backend.run({"x": x})["y"]
    backend.close()

    class Public(LiteRTBackend):
        def _bind(self, interp: object) -> None:
            super()._bind(types.SimpleNamespace(**{m: getattr(interp, m) for m in _PUBLIC}))

    public = Public(built_models["tflite-small-int8"].path, threads=1)
    assert public._native is False
    for rows in (30, 1, 30):
        np.testing.assert_allclose(public.run({"x": x[:rows]})["y"], fast[:rows], atol=1e-6)
    public.close()


_PUBLIC = ("set_tensor", "invoke", "get_tensor", "resize_tensor_input", "allocate_tensors")


# --- multi-input ONNX ---------------------------------------------------------------------------------------


@pytest.fixture
def two_inputs(tmp_path: Path) -> object:
    backend = open_backend(write_onnx_two_inputs(tmp_path / "two.onnx"), threads=1)
    yield backend
    backend.close()


def test_multi_input_specs_and_results(two_inputs: OnnxBackend) -> None:
    assert [(s.name, s.shape, s.dtype) for s in two_inputs.inputs] == [
        ("dense", (None, 3), np.dtype(np.float32)),
        ("ids", (None, 2), np.dtype(np.int64)),
    ]
    dense = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)
    ids = np.array([[1, 2], [3, 4]], dtype=np.int64)
    out = two_inputs.run({"ids": ids, "dense": dense})
    np.testing.assert_allclose(out["score"], [[4.0], [12.0]])
    # a read-only mapping works, and int32 ids are widened safely
    feeds = types.MappingProxyType({"dense": dense, "ids": ids.astype(np.int32)})
    np.testing.assert_allclose(two_inputs.run(feeds)["score"], [[4.0], [12.0]])


def test_casting_never_mutates_the_callers_feeds(two_inputs: OnnxBackend) -> None:
    dense64 = np.zeros((1, 3), dtype=np.float64)
    feeds: dict[str, np.ndarray] = {"dense": dense64, "ids": np.zeros((1, 2), dtype=np.int32)}
    two_inputs.run(feeds)
    assert feeds["dense"] is dense64
    assert feeds["ids"].dtype == np.int32


def test_multi_input_errors_name_the_input(two_inputs: OnnxBackend) -> None:
    dense = np.zeros((1, 3), dtype=np.float32)
    with pytest.raises(ModelInputError, match="missing input 'ids'") as info:
        two_inputs.run({"dense": dense, "idz": np.zeros((1, 2), dtype=np.int64)})
    assert info.value.input_name == "ids"
    with pytest.raises(ModelInputError, match="input 'ids' has dtype float32, expected int64") as info:
        two_inputs.run({"dense": dense, "ids": np.zeros((1, 2), dtype=np.float32)})
    assert info.value.input_name == "ids"
    with pytest.raises(ModelInputError, match="input 'ids' has dtype uint64, expected int64"):
        two_inputs.run({"dense": dense, "ids": np.zeros((1, 2), dtype=np.uint64)})


def test_an_engine_level_input_error_is_translated(two_inputs: OnnxBackend) -> None:
    """Batch sizes that differ between inputs pass our per-input checks; onnxruntime's refusal is typed too."""
    with pytest.raises(ModelError) as info:
        two_inputs.run({"dense": np.zeros((2, 3), np.float32), "ids": np.zeros((3, 2), np.int64)})
    assert info.value.__cause__ is not None


# --- the shared input checks --------------------------------------------------------------------------------

_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64, np.bool_]


@settings(max_examples=300, deadline=None)
@given(
    model_dtype=st.sampled_from([np.float32, np.int64, np.int8]),
    given_dtype=st.sampled_from(_DTYPES),
    model_shape=st.lists(st.one_of(st.none(), st.integers(1, 4)), min_size=1, max_size=3),
    given_shape=st.lists(st.integers(0, 4), min_size=0, max_size=4),
)
def test_coerce_input_either_returns_a_fitting_array_or_raises_model_input_error(
    model_dtype: type, given_dtype: type, model_shape: list[int | None], given_shape: list[int]
) -> None:
    dtype = np.dtype(model_dtype)
    spec = TensorSpec("t", tuple(model_shape), dtype, dtype)
    value: np.ndarray = np.zeros(given_shape, dtype=given_dtype)
    error: ModelInputError | None
    try:
        out = coerce_input(spec, value, dtype)
    except ModelInputError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        assert error.input_name == "t"
        assert "'t'" in str(error)
        return
    assert out.dtype == dtype
    assert out.shape == value.shape
    assert all(want is None or want == got for want, got in zip(model_shape, out.shape, strict=True))
    if dtype.kind == "f":
        assert np.dtype(given_dtype).kind == "f"
    else:
        assert np.can_cast(given_dtype, dtype, "safe")
        assert np.dtype(given_dtype).kind in "iu"


def test_coerce_input_refuses_what_is_not_array_like() -> None:
    spec = TensorSpec("t", (None, 2), np.dtype(np.float32), np.dtype(np.float32))
    with pytest.raises(ModelInputError, match="input 't' has dtype <U32, expected float32"):
        coerce_input(spec, [[1.0, "a"]], spec.dtype)
    with pytest.raises(ModelInputError, match="input 't' is not array-like"):
        coerce_input(spec, [[1.0, 2.0], [3.0]], spec.dtype)


# --- the flatbuffer structure check (guards tflite-runtime, which segfaults on a truncated file) --------------


@pytest.mark.parametrize("key", ["tflite-small", "tflite-small-int8", "tflite-large"])
def test_flatbuffer_check_accepts_sound_models_and_catches_every_truncation(
    built_models: dict[str, BuiltModel], key: str
) -> None:
    data = built_models[key].path.read_bytes()
    assert flatbuffer_problem(data) is None
    step = max(1, len(data) // 300)
    for n in range(0, len(data), step):
        problem = flatbuffer_problem(data[:n])
        assert problem is not None, f"a file cut to {n} of {len(data)} bytes passed"


def test_flatbuffer_check_accepts_committed_models() -> None:
    from _backend_models import committed_models

    for path in committed_models(".tflite"):
        assert flatbuffer_problem(path.read_bytes()) is None, path


def test_flatbuffer_check_names_a_wrong_identifier(built_models: dict[str, BuiltModel]) -> None:
    onnx = built_models["onnx-small"].path.read_bytes()
    assert "expected b'TFL3'" in (flatbuffer_problem(onnx) or "")
    assert "too short" in (flatbuffer_problem(b"TFL3") or "")


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=512), st.integers(0, 2**32 - 1))
def test_flatbuffer_check_never_raises_on_arbitrary_bytes(blob: bytes, root: int) -> None:
    """Whatever the bytes, the check answers with a reason or None; it never raises or reads out of bounds."""
    data = root.to_bytes(4, "little") + b"TFL3" + blob
    result = flatbuffer_problem(data)
    assert result is None or isinstance(result, str)


def test_tflite_runtime_verifies_structure_before_the_engine_sees_the_file(
    built_models: dict[str, BuiltModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs before the interpreter is created, so a truncated file can never reach the C++ loader."""
    created: list[object] = []
    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = lambda **kwargs: created.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    monkeypatch.setattr(TfliteRuntimeBackend, "_numpy_compatible", classmethod(lambda cls: True))
    path = tmp_path / "cut.tflite"
    data = built_models["tflite-small"].path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="not a valid TFLite model: truncated or corrupt"):
        TfliteRuntimeBackend(path)
    assert created == []


def test_tflite_falls_back_from_litert_and_explains_when_nothing_works(
    built_models: dict[str, BuiltModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LiteRTBackend, "module", "edge_runtime_no_such_module.interpreter")
    path = built_models["tflite-small"].path
    if _tflite_runtime_usable():
        backend = open_backend(path)
        assert backend.name == "tflite-runtime"
        backend.close()
        return
    with pytest.raises(BackendUnavailableError) as info:
        open_backend(path)
    assert info.value.backend == "litert/tflite-runtime"
    assert "edge_runtime_no_such_module" in info.value.reason
    assert "tflite_runtime" in info.value.reason
    assert info.value.hint is not None
    assert "ai-edge-litert" in info.value.hint
    assert "edge-runtime[tflite]" in info.value.hint


def test_string_inputs_take_numpy_str_arrays(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["s"], ["out"])],
        "strings",
        [helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "strings.onnx"))
    backend = open_backend(tmp_path / "strings.onnx")
    assert backend.inputs[0].dtype == np.dtype(object)
    out = backend.run({"s": np.array([["a"], ["bc"]])})["out"]
    assert out.tolist() == [["a"], ["bc"]]
    with pytest.raises(ModelInputError, match="input 's' has dtype float32, expected object"):
        backend.run({"s": np.zeros((2, 1), np.float32)})
    backend.close()
