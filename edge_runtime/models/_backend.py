"""The inference backend contract and the registry that picks a backend by name, with lazy imports.

A backend wraps one engine (ONNX Runtime, LiteRT, tflite-runtime) behind :class:`InferenceBackend`. The registry
maps a backend name to ``"module:Class"`` and imports the module only when that backend is opened, so the device
import path never loads an engine it does not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .._errors import BackendUnavailableError


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


@runtime_checkable
class InferenceBackend(Protocol):
    """What every inference backend provides. Implementations must be safe to call from one thread at a time;
    the serving layer serialises or pools calls."""

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


def open_backend(
    path: str | Path, *, backend: str | None = None, fmt: str | None = None, threads: int | None = None
) -> InferenceBackend:
    """Open the model at ``path`` on ``backend``, or on the first backend that works for its format.

    A backend whose library is missing raises :class:`BackendUnavailableError`; with ``backend=None`` the next
    one for the format is tried, and the error lists every reason when none works.
    """
    names = (backend,) if backend else FORMAT_BACKENDS[fmt or format_of(path)]
    reasons = []
    for name in names:
        try:
            return backend_class(name)(path, threads=threads)  # type: ignore[call-arg]
        except BackendUnavailableError as exc:
            reasons.append(str(exc))
    raise BackendUnavailableError(
        "/".join(names), "; ".join(reasons), hint="install ai-edge-litert, or the 'tflite' extra for tflite-runtime"
    )


def available_backends() -> dict[str, bool]:
    """Each registered backend and whether its library imports here."""
    result = {}
    for name in BACKENDS:
        try:
            cls = backend_class(name)
            probe = getattr(cls, "is_available", None)
            result[name] = bool(probe()) if probe else True
        except (ImportError, BackendUnavailableError):
            result[name] = False
    return result
