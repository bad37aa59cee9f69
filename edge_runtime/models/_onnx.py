"""ONNX Runtime backend: one CPU ``InferenceSession`` behind :class:`~edge_runtime.models._backend.InferenceBackend`.

The hot path is budgeted against a raw ``session.run`` of ~5-11 µs, so everything that does not depend on the
call is worked out in ``__init__``: the output-name list, each input's expected dtype object and the fixed part of
its shape. A call checks each feed with one type test, one dtype identity test and one tuple comparison, and goes
to :func:`~edge_runtime.models._backend.coerce_input` only when one of them fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, BundleError, ModelError, ModelInputError

from ._backend import TensorSpec, check_threads, coerce_input, fast_shape, missing_input

#: ONNX tensor element types → numpy dtypes.
_ONNX_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}

_ndarray = np.ndarray


def _spec(arg: Any, path: Path, *, is_input: bool) -> TensorSpec:
    dtype = _ONNX_DTYPES.get(arg.type)
    if dtype is None:
        if is_input:
            raise BundleError(f"input {arg.name!r} has unsupported type {arg.type}", path=path)
        dtype = np.dtype(object)  # sequences/maps (e.g. ZipMap outputs) come back as Python objects
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorSpec(arg.name, shape, dtype, dtype)


class OnnxBackend:
    """An ONNX model on ONNX Runtime's CPU execution provider.

    ``threads`` sets the intra-op thread count (None = ONNX Runtime's default, one per physical core); execution
    is sequential so inter-op threads are fixed at 1. Graph optimisations are all enabled.
    """

    name = "onnxruntime"
    #: ``InferenceSession.run`` is documented thread-safe, and this wrapper keeps no per-call state.
    thread_safe = True

    @staticmethod
    def is_available() -> bool:
        """Whether ``onnxruntime`` imports here."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        check_threads(threads)
        self.path = Path(path)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError(
                self.name, f"cannot import onnxruntime: {exc}", hint="pip install onnxruntime"
            ) from exc
        if not self.path.is_file():
            raise BundleError("model file not found", path=self.path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: warnings about unused initializers are noise on a device
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's exceptions derive from Exception only
            raise BundleError(f"cannot load ONNX model: {exc}", path=self.path) from exc
        self._session: Any = session
        self._inputs = tuple(_spec(a, self.path, is_input=True) for a in session.get_inputs())
        self._outputs = tuple(_spec(a, self.path, is_input=False) for a in session.get_outputs())
        self._output_names = [s.name for s in self._outputs]
        self._checks = tuple((s.name, s.dtype, *fast_shape(s), s) for s in self._inputs)
        self._n_inputs = len(self._inputs)
        # The pybind session skips the Python wrapper's per-call checks (graph-capture mode, OrtValue ownership,
        # a list() of the feed keys) that cost ~1 µs; ours replace them. Fall back if a release renames it.
        engine = getattr(session, "_sess", None)
        self._engine_run: Callable[..., list[Any]] = (
            engine.run if engine is not None and hasattr(engine, "run") else session.run
        )
        self._engine_extra: tuple[Any, ...] = (None,) if engine is not None else ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs, in the session's order."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs, in the session's order."""
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run the model; ``raw`` changes nothing on ONNX (quantized ONNX models take and return floats)."""
        if len(feeds) != self._n_inputs:
            raise missing_input(feeds, self._inputs, raw=raw)
        # pybind wants a real dict; any other Mapping is copied once.
        fixed: dict[str, Any] | None = None if feeds.__class__ is dict else dict(feeds)
        for name, dtype, start, tail, spec in self._checks:
            try:
                a = feeds[name]
            except KeyError:
                raise missing_input(feeds, self._inputs, raw=raw) from None
            if a.__class__ is not _ndarray or a.dtype is not dtype or a.shape[start:] != tail:
                b = coerce_input(spec, a, dtype)
                if b is not a:
                    if fixed is None:
                        fixed = dict(feeds)  # never mutate the caller's mapping
                    fixed[name] = b
        try:
            results = self._engine_run(self._output_names, fixed if fixed is not None else feeds, *self._engine_extra)
        except Exception as exc:
            raise self._translate(exc) from exc
        return dict(zip(self._output_names, results, strict=True))

    def _translate(self, exc: Exception) -> ModelError:
        if self._session is None:
            return ModelError(f"{self.path}: backend is closed")
        if type(exc).__name__ == "InvalidArgument":
            return ModelInputError(f"{self.path}: onnxruntime rejected the inputs: {exc}")
        return ModelError(f"{self.path}: onnxruntime failed: {exc}")

    def close(self) -> None:
        """Drop the session; later calls to :meth:`run` raise :class:`~edge_runtime.ModelError`."""
        self._session = None
        self._engine_run = _closed
        self._engine_extra = ()

    def __enter__(self) -> OnnxBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r})"


def _closed(*args: object) -> list[Any]:
    raise RuntimeError("closed")
