"""The inference backend contract and the registry that picks a backend by name, with lazy imports.

A backend wraps one engine (ONNX Runtime, LiteRT, tflite-runtime) behind :class:`InferenceBackend`. The registry
maps a backend name to ``"module:Class"`` and imports the module only when that backend is opened, so the device
import path never loads an engine it does not use.

This module also holds the input checks every backend shares. Backends run a cheap fast check inline (exact
array type, dtype identity, the fixed part of the shape as one tuple comparison) and call :func:`coerce_input`
only when that fails; it either returns an acceptable array (after a documented cast) or raises a
:class:`~edge_runtime.ModelInputError` that names the input and what was expected.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_runtime._errors import BackendUnavailableError, ConfigError, ModelInputError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    ``shape`` uses ``None`` for a dynamic dimension (usually the batch). ``quantization`` is ``(scale,
    zero_point)`` for an int8/uint8-quantized tensor, else None; ``dtype`` is the dtype callers pass or receive
    (float32 for a quantized tensor unless they ask for raw tensors), ``raw_dtype`` the engine's own dtype.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    raw_dtype: np.dtype
    quantization: tuple[float, int] | None = None

    def describe(self, *, raw: bool = False) -> str:
        """``name: float32[None, 8]`` — for error messages and ``models inspect``-style listings."""
        dims = ", ".join("None" if d is None else str(d) for d in self.shape)
        dtype = self.raw_dtype if raw else self.dtype
        return f"{self.name}: {dtype}[{dims}]"


@runtime_checkable
class InferenceBackend(Protocol):
    """What every inference backend provides. Implementations must be safe to call from one thread at a time;
    the serving layer serialises or pools calls. A backend whose ``run`` may be called from several threads at
    once says so with a class attribute ``thread_safe = True`` (ONNX Runtime does; the TFLite backends do not)."""

    #: Registry name of the backend (``"onnxruntime"``, ``"litert"``, ``"tflite-runtime"``).
    name: str

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs, in the engine's order."""
        ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs, in the engine's order."""
        ...

    def run(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run the model on ``feeds`` (input name → array, leading batch dimension) and return every output.

        Quantized tensors are quantized/dequantized with their scale and zero point unless ``raw`` is true.
        Raises :class:`~edge_runtime.ModelInputError` for a missing input or a wrong dtype or shape.
        """
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...


#: Backend name → ``"module:Class"``. Classes take ``(path, *, threads=None)``.
BACKENDS: dict[str, str] = {
    "onnxruntime": "edge_runtime.models._onnx:OnnxBackend",
    "litert": "edge_runtime.models._tflite:LiteRTBackend",
    "tflite-runtime": "edge_runtime.models._tflite:TfliteRuntimeBackend",
}

#: Model file format → backends to try, in order of preference.
FORMAT_BACKENDS: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "tflite": ("litert", "tflite-runtime"),
}

_SUFFIX_FORMATS = {".onnx": "onnx", ".tflite": "tflite"}

_INSTALL_HINTS = {
    "onnx": "pip install onnxruntime",
    "tflite": "pip install ai-edge-litert, or pip install 'edge-runtime[tflite]' (pins numpy<2)",
}


def format_of(path: str | Path) -> str:
    """The model format implied by a file's suffix (``.onnx`` or ``.tflite``)."""
    fmt = _SUFFIX_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BackendUnavailableError(
            "auto", f"cannot tell the format of {str(path)!r}", hint="expected a .onnx or .tflite file"
        )
    return fmt


def backend_class(name: str) -> type[InferenceBackend]:
    """Import and return the class registered as ``name``."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(
            name, "no such backend", hint=f"known backends: {', '.join(sorted(BACKENDS))}"
        ) from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[InferenceBackend] = getattr(module, class_name)
    return cls


def check_threads(threads: int | None) -> int | None:
    """Validate a thread count (None = the engine's default)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError("thread count must be a positive integer or None", key="threads", got=threads)
    return threads


def open_backend(
    path: str | Path, *, backend: str | None = None, fmt: str | None = None, threads: int | None = None
) -> InferenceBackend:
    """Open the model at ``path`` on ``backend``, or on the first backend that works for its format.

    A backend whose library is missing raises :class:`BackendUnavailableError`; with ``backend=None`` the next
    one for the format is tried, and the error lists every reason when none works. A model file that cannot be
    read or parsed raises :class:`~edge_runtime.BundleError` at once (another engine would not read it either).
    """
    check_threads(threads)
    if fmt is not None and fmt not in FORMAT_BACKENDS:
        raise BackendUnavailableError(
            "auto", f"unknown model format {fmt!r}", hint=f"known formats: {', '.join(sorted(FORMAT_BACKENDS))}"
        )
    if backend:
        backend_class(backend)  # an unknown name fails here with the list of known ones
        known_fmt = fmt or _SUFFIX_FORMATS.get(Path(path).suffix.lower())
        if known_fmt is not None and backend not in FORMAT_BACKENDS[known_fmt]:
            raise BackendUnavailableError(
                backend,
                f"cannot run {known_fmt} models",
                hint=f"use one of: {', '.join(FORMAT_BACKENDS[known_fmt])}",
            )
        names: tuple[str, ...] = (backend,)
    else:
        fmt = fmt or format_of(path)
        names = FORMAT_BACKENDS[fmt]
    reasons: list[str] = []
    last: BackendUnavailableError | None = None
    for name in names:
        try:
            return backend_class(name)(path, threads=threads)  # type: ignore[call-arg]
        except BackendUnavailableError as exc:
            reasons.append(str(exc))
            last = exc
    if len(names) == 1 and last is not None:
        raise last
    hint = _INSTALL_HINTS.get(fmt or "")
    raise BackendUnavailableError("/".join(names), "; ".join(reasons), hint=hint)


def available_backends() -> dict[str, bool]:
    """Each registered backend and whether its library imports and can run here."""
    result = {}
    for name in BACKENDS:
        try:
            cls = backend_class(name)
            probe = getattr(cls, "is_available", None)
            result[name] = bool(probe()) if probe else True
        except (ImportError, BackendUnavailableError):
            result[name] = False
    return result


def runnable_formats() -> set[str]:
    """Model formats (``onnx``, ``tflite``) that some backend available here can run."""
    avail = available_backends()
    return {fmt for fmt, names in FORMAT_BACKENDS.items() if any(avail.get(n) for n in names)}


# --- input checks shared by the backends ---------------------------------------------------------------------


def fast_shape(spec: TensorSpec) -> tuple[int, tuple[int, ...] | None]:
    """``(start, expected)`` such that ``array.shape[start:] == expected`` proves the shape fits ``spec``.

    A dynamic leading (batch) dimension is skipped; ``expected`` is None when some other dimension is dynamic,
    which sends every call through :func:`coerce_input`.
    """
    shape = spec.shape
    start = 1 if shape and shape[0] is None else 0
    tail = shape[start:]
    if any(d is None for d in tail):
        return start, None
    return start, tuple(d for d in tail if d is not None)


def missing_input(feeds: Mapping[str, object], specs: tuple[TensorSpec, ...], *, raw: bool) -> ModelInputError:
    """The error for feeds whose keys do not match the model's inputs."""
    expected = ", ".join(s.describe(raw=raw) for s in specs)
    names = {s.name for s in specs}
    for spec in specs:
        if spec.name not in feeds:
            return ModelInputError(
                f"missing input {spec.name!r}; the model takes {expected}; got {sorted(map(str, feeds))}",
                input_name=spec.name,
            )
    extra = sorted(str(k) for k in feeds if k not in names)
    return ModelInputError(
        f"unknown input {extra[0]!r}; the model takes {expected}", input_name=extra[0] if extra else None
    )


def coerce_input(spec: TensorSpec, value: object, dtype: np.dtype, *, raw: bool = False) -> np.ndarray:
    """Return ``value`` as an array ``spec`` accepts, or raise :class:`ModelInputError` saying why not.

    Casting rules: a floating input accepts any floating array (float64 and float16 are cast to the model's
    float dtype; values beyond float32 precision are rounded, which is below any model's own precision); an
    integer input accepts integers that cast safely (int32 for int64, not the reverse); a string input accepts
    numpy str arrays. Everything else — ints or bools for a float input, floats for an integer input, strings or
    objects for a numeric input — is refused.
    """
    name = spec.name
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise ModelInputError(
                f"input {name!r} is not array-like ({type(value).__name__}); expected {spec.describe(raw=raw)}",
                input_name=name,
            ) from exc
    array: np.ndarray = value
    if array.dtype != dtype:
        got = array.dtype
        ok = (
            (dtype.kind == "f" and got.kind == "f")
            or (dtype.kind in "iu" and got.kind in "iu" and np.can_cast(got, dtype, "safe"))
            or (dtype.kind == "O" and got.kind in "US")  # ONNX string tensors take numpy str arrays as objects
        )
        if not ok:
            cast_note = " (other float widths are cast)" if dtype.kind == "f" else ""
            raise ModelInputError(
                f"input {name!r} has dtype {got}, expected {dtype}{cast_note}; model input {spec.describe(raw=raw)}",
                input_name=name,
            )
        array = array.astype(dtype)
    shape = spec.shape
    if array.ndim != len(shape):
        hint = ""
        if array.ndim == len(shape) - 1:
            hint = "; add the batch dimension, e.g. x[None, ...] for one row"
        raise ModelInputError(
            f"input {name!r} has shape {array.shape} (rank {array.ndim}), expected rank {len(shape)}: "
            f"{spec.describe(raw=raw)}{hint}",
            input_name=name,
        )
    for axis, (want, got_dim) in enumerate(zip(shape, array.shape, strict=True)):
        if want is not None and want != got_dim:
            raise ModelInputError(
                f"input {name!r} has shape {array.shape}, but dimension {axis} must be {want}: "
                f"{spec.describe(raw=raw)}",
                input_name=name,
            )
    return array
