"""TFLite backends: one class over the TFLite interpreter API, parameterised by the module that provides it.

:class:`LiteRTBackend` uses ``ai_edge_litert.interpreter`` (the maintained successor, works with numpy 2);
:class:`TfliteRuntimeBackend` uses ``tflite_runtime.interpreter``, whose last release (2.14) is built against
numpy 1.x and fails at interpreter creation under numpy 2 with ``_ARRAY_API not found`` — that, like a missing
package, surfaces as :class:`~edge_runtime.BackendUnavailableError` with the install hint.

Hot path: a raw ``set_tensor``/``invoke``/``get_tensor`` sequence on a tiny model costs ~1.5-2.5 µs, so the
per-call budget for our own work is a few hundred nanoseconds. ``__init__`` therefore precomputes everything
(tensor indices, expected dtype objects, quantization parameters, a dequantization lookup table) and binds the
interpreter wrapper's methods directly: the public ``Interpreter`` methods add a Python frame each, and
``invoke()`` runs a ``sys.getrefcount`` safety check that only matters for callers holding ``tensor()`` views,
which this class never creates. Inputs are resized (and tensors reallocated) only when a batch size changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, BundleError, ModelError, ModelInputError

from ._backend import TensorSpec, check_threads, coerce_input, fast_shape, missing_input
from ._flatbuffer import file_problem

_ndarray = np.ndarray
_FLOAT32 = np.dtype(np.float32)
#: Integer dtypes whose per-tensor (scale, zero point) we apply for callers.
_QUANTIZED = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)}
#: Messages that mean the library was built against another numpy ABI (tflite-runtime 2.14 under numpy 2).
_NUMPY_ABI_MARKERS = ("_ARRAY_API", "numpy.core.multiarray", "compiled using NumPy", "numpy")


class _Quantizer:
    """float32 → integer with ``round(x / scale) + zero_point`` clipped to the dtype's range."""

    __slots__ = ("hi", "inv_scale", "lo", "raw_dtype", "zero_point")

    def __init__(self, scale: float, zero_point: int, raw_dtype: np.dtype) -> None:
        info = np.iinfo(raw_dtype)
        self.inv_scale = np.float32(1.0 / scale)
        self.zero_point = np.float32(zero_point)
        self.lo, self.hi = np.float32(info.min), np.float32(info.max)
        self.raw_dtype = raw_dtype

    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = x * self.inv_scale  # a fresh float32 temporary, so the rest can work in place
        t += self.zero_point
        np.rint(t, out=t)
        np.minimum(t, self.hi, out=t)
        np.maximum(t, self.lo, out=t)
        return t.astype(self.raw_dtype)


class _Dequantizer:
    """Integer → float32 ``(q - zero_point) * scale``; 8-bit tensors use a 256-entry lookup table (one take)."""

    __slots__ = ("raw_dtype", "scale", "table", "zero_point")

    def __init__(self, scale: float, zero_point: int, raw_dtype: np.dtype) -> None:
        self.scale = np.float32(scale)
        self.zero_point = np.float32(zero_point)
        self.raw_dtype = raw_dtype
        self.table: np.ndarray | None = None
        if raw_dtype.itemsize == 1:
            codes = np.arange(256, dtype=np.uint8).view(raw_dtype)  # table index = the byte's unsigned value
            self.table = (codes.astype(np.float32) - self.zero_point) * self.scale

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.table is not None:
            return self.table.take(q.view(np.uint8))
        out = q.astype(np.float32)
        out -= self.zero_point
        out *= self.scale
        return out


def _tensor_spec(detail: Mapping[str, Any]) -> tuple[TensorSpec, tuple[float, int] | None]:
    raw_dtype = np.dtype(detail["dtype"])
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) == len(detail["shape"]) else detail["shape"]
    shape = tuple(d if d >= 0 else None for d in np.asarray(dims).tolist())  # tolist: Python ints, fast
    params = detail.get("quantization_parameters") or {}
    scales, zero_points = params.get("scales", ()), params.get("zero_points", ())
    quant: tuple[float, int] | None = None
    if raw_dtype in _QUANTIZED and len(scales) == 1 and float(scales[0]) > 0:
        quant = (float(scales[0]), int(zero_points[0]) if len(zero_points) else 0)
    dtype = _FLOAT32 if quant is not None else raw_dtype
    return TensorSpec(str(detail["name"]), shape, dtype, raw_dtype, quant), quant


class TfliteBackend:
    """A TFLite model on an interpreter from :attr:`module` (subclasses choose it).

    ``threads`` is the interpreter's ``num_threads`` (None = the library default). With ``run(..., raw=True)``
    quantized inputs are taken and outputs returned as the engine's integers, unscaled.
    """

    #: Registry name; set by subclasses.
    name = "tflite"
    #: Module that provides ``Interpreter``.
    module = ""
    #: How to install it.
    hint = ""
    #: Check the flatbuffer's structure before the engine sees it (for engines that do not verify it themselves).
    verify_structure = False
    #: ``run`` may not be called from several threads at once (a TFLite interpreter is not thread-safe).
    thread_safe = False

    @classmethod
    def interpreter_class(cls) -> Any:
        """Import :attr:`module` and return its ``Interpreter``, or raise :class:`BackendUnavailableError`."""
        try:
            mod = importlib.import_module(cls.module)
            return mod.Interpreter
        except Exception as exc:  # ImportError, or numpy ABI errors raised while the extension initialises
            raise BackendUnavailableError(cls.name, f"cannot import {cls.module}: {exc}", hint=cls.hint) from exc

    @classmethod
    def is_available(cls) -> bool:
        """Whether the interpreter module imports and is usable with the installed numpy."""
        try:
            cls.interpreter_class()
        except BackendUnavailableError:
            return False
        return cls._numpy_compatible()

    @classmethod
    def _numpy_compatible(cls) -> bool:
        return True

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        check_threads(threads)
        self.path = Path(path)
        interpreter_cls = self.interpreter_class()
        if not self._numpy_compatible():
            raise BackendUnavailableError(
                self.name, f"{self.module} is built for numpy 1.x; numpy {np.__version__} is installed", hint=self.hint
            )
        if not self.path.is_file():
            raise BundleError("model file not found", path=self.path)
        if self.verify_structure:
            problem = file_problem(self.path)
            if problem is not None:
                raise BundleError(f"not a valid TFLite model: {problem}", path=self.path)
        try:
            interp = interpreter_cls(model_path=str(self.path), num_threads=threads)
            interp.allocate_tensors()
        except (ImportError, AttributeError, SystemError) as exc:
            if any(m in str(exc) for m in _NUMPY_ABI_MARKERS):
                raise BackendUnavailableError(self.name, f"incompatible with numpy: {exc}", hint=self.hint) from exc
            raise BundleError(f"cannot load TFLite model: {exc}", path=self.path) from exc
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"cannot load TFLite model: {exc}", path=self.path) from exc
        in_details, out_details = interp.get_input_details(), interp.get_output_details()
        self._interpreter: Any = interp
        in_specs = [_tensor_spec(d) for d in in_details]
        out_specs = [_tensor_spec(d) for d in out_details]
        self._inputs = tuple(s for s, _ in in_specs)
        self._outputs = tuple(s for s, _ in out_specs)
        self._n_inputs = len(self._inputs)
        # Per input: (tensor index, name, dtype we accept, shape check, spec, quantizer or None), for float callers
        # and for raw callers.
        self._in_plan = tuple(
            (int(d["index"]), s.name, s.dtype, *fast_shape(s), s, _Quantizer(*q, s.raw_dtype) if q else None)
            for d, (s, q) in zip(in_details, in_specs, strict=True)
        )
        self._in_plan_raw = tuple(
            (int(d["index"]), s.name, s.raw_dtype, *fast_shape(s), s, None)
            for d, (s, _) in zip(in_details, in_specs, strict=True)
        )
        self._out_plan = tuple(
            (int(d["index"]), s.name, _Dequantizer(*q, s.raw_dtype) if q else None)
            for d, (s, q) in zip(out_details, out_specs, strict=True)
        )
        self._out_plan_raw = tuple((index, name, None) for index, name, _ in self._out_plan)
        self._shapes = {int(d["index"]): tuple(int(x) for x in d["shape"]) for d in in_details}
        self._bind(interp)
        if len(self._in_plan) == 1 and len(self._out_plan) == 1:
            self.run = self._single_run()  # type: ignore[method-assign]

    def _bind(self, interp: Any) -> None:
        wrapper = getattr(interp, "_interpreter", None)
        if wrapper is not None and all(
            hasattr(wrapper, m) for m in ("SetTensor", "Invoke", "GetTensor", "ResizeInputTensor", "AllocateTensors")
        ):
            self._set: Callable[[int, np.ndarray], object] = wrapper.SetTensor
            self._invoke: Callable[[], object] = wrapper.Invoke
            self._get: Callable[[int], np.ndarray] = wrapper.GetTensor
            self._resize_native: Callable[..., object] = wrapper.ResizeInputTensor
            self._allocate: Callable[[], object] = wrapper.AllocateTensors
            self._native = True
        else:  # an interpreter without the usual pybind wrapper: the public API works too, just slower
            self._set, self._invoke, self._get = interp.set_tensor, interp.invoke, interp.get_tensor
            self._resize_native, self._allocate = interp.resize_tensor_input, interp.allocate_tensors
            self._native = False

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs, in the interpreter's order."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The model's outputs, in the interpreter's order."""
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run the model. Quantized tensors take and return float32 unless ``raw``; see the class docstring."""
        return self._run_generic(feeds, raw=raw)

    def _run_generic(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run the model. Quantized tensors take and return float32 unless ``raw``; see the class docstring."""
        if len(feeds) != self._n_inputs:
            raise missing_input(feeds, self._inputs, raw=raw)
        shapes = self._shapes
        try:
            pending = []
            for index, name, dtype, start, tail, spec, quantize in self._in_plan_raw if raw else self._in_plan:
                try:
                    a = feeds[name]
                except KeyError:
                    raise missing_input(feeds, self._inputs, raw=raw) from None
                if a.__class__ is not _ndarray or a.dtype is not dtype or a.shape[start:] != tail:
                    a = coerce_input(spec, a, dtype, raw=raw)
                pending.append((index, name, a if quantize is None else quantize(a)))
            if any(a.ndim and a.shape[0] == 0 for _, _, a in pending):
                return self._empty_outputs(raw)
            for index, name, a in pending:
                if a.shape != shapes[index]:
                    self._resize(index, name, a.shape)
                self._set(index, a)
            self._invoke()
            out = {}
            for index, name, dequantize in self._out_plan_raw if raw else self._out_plan:
                y = self._get(index)
                out[name] = y if dequantize is None else dequantize(y)
        except ModelError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc
        return out

    def _single_run(self) -> Callable[..., dict[str, np.ndarray]]:
        """:meth:`run` specialised for one input and one output — nearly every edge model — as a closure.

        Cell variables are cheaper than attribute lookups at this scale, and one comparison with the last accepted
        shape replaces the shape check (an identical shape was validated when first seen). Anything unusual — raw
        mode, a cast, a new batch size, a bad feed — goes through the generic path. :meth:`close` rebinds the
        engine calls through ``self._disable_single`` so the closure does not keep the interpreter alive.
        """
        generic = self._run_generic
        index, name, dtype, _, _, _, quantize = self._in_plan[0]
        out_index, out_name, dequantize = self._out_plan[0]
        shapes = self._shapes
        last = [shapes[index]]
        set_tensor, invoke, get_tensor = self._set, self._invoke, self._get
        failure = self._failure

        def disable() -> None:
            nonlocal set_tensor, invoke, get_tensor
            set_tensor = invoke = get_tensor = _closed

        self._disable_single = disable

        def slow(feeds: Mapping[str, np.ndarray], raw: bool) -> dict[str, np.ndarray]:
            try:
                return generic(feeds, raw=raw)
            finally:  # even a failed call may have resized the input
                last[0] = shapes[index]

        if quantize is None and dequantize is None:

            def run(feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
                try:
                    a = feeds[name]
                except KeyError:
                    return slow(feeds, raw)
                if raw or a.__class__ is not _ndarray or a.dtype is not dtype or a.shape != last[0] or len(feeds) != 1:
                    return slow(feeds, raw)
                try:
                    set_tensor(index, a)
                    invoke()
                    return {out_name: get_tensor(out_index)}
                except Exception as exc:
                    raise failure(exc) from exc

        else:
            quant = quantize or _identity
            dequant = dequantize or _identity

            def run(feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
                try:
                    a = feeds[name]
                except KeyError:
                    return slow(feeds, raw)
                if raw or a.__class__ is not _ndarray or a.dtype is not dtype or a.shape != last[0] or len(feeds) != 1:
                    return slow(feeds, raw)
                try:
                    set_tensor(index, quant(a))
                    invoke()
                    return {out_name: dequant(get_tensor(out_index))}
                except Exception as exc:
                    raise failure(exc) from exc

        run.__doc__ = self._run_generic.__doc__
        return run

    def _failure(self, exc: Exception) -> ModelError:
        if self._interpreter is None:
            return ModelError(f"{self.path}: backend is closed")
        return ModelError(f"{self.path}: {self.name} failed: {exc}")

    def _empty_outputs(self, raw: bool) -> dict[str, np.ndarray]:
        """An empty batch gives empty outputs without touching the engine (ONNX Runtime does the same)."""
        out = {}
        for spec in self._outputs:
            rest = spec.shape[1:]
            if not spec.shape or any(d is None for d in rest):
                raise ModelInputError(f"an empty batch cannot be run: output {spec.name!r} has a dynamic shape")
            out[spec.name] = np.empty((0, *(d for d in rest if d is not None)), spec.raw_dtype if raw else spec.dtype)
        return out

    def _resize(self, index: int, name: str, shape: tuple[int, ...]) -> None:
        """Resize input ``index`` and reallocate; other inputs keep their last sizes (cached in ``_shapes``)."""
        if 0 in shape:
            raise ModelInputError(f"input {name!r} has an empty dimension: shape {shape}", input_name=name)
        if self._native:  # the pybind call takes an int32 array and the 'strict' flag positionally
            self._resize_native(index, np.array(shape, dtype=np.int32), False)
        else:
            self._resize_native(index, list(shape))
        self._allocate()
        self._shapes[index] = shape

    def close(self) -> None:
        """Drop the interpreter; later calls to :meth:`run` raise :class:`~edge_runtime.ModelError`."""
        self._interpreter = None
        self._set = self._invoke = self._get = _closed
        self._resize_native = self._allocate = _closed
        disable = getattr(self, "_disable_single", None)
        if disable is not None:
            disable()

    def __enter__(self) -> TfliteBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _closed(*args: object) -> Any:
    raise RuntimeError("closed")


def _identity(a: np.ndarray) -> np.ndarray:
    return a


class LiteRTBackend(TfliteBackend):
    """TFLite models on LiteRT (``ai-edge-litert``), the preferred TFLite engine."""

    name = "litert"
    module = "ai_edge_litert.interpreter"
    hint = "pip install ai-edge-litert"


class TfliteRuntimeBackend(TfliteBackend):
    """TFLite models on ``tflite-runtime``, the fallback when LiteRT is not installed (needs numpy < 2)."""

    name = "tflite-runtime"
    module = "tflite_runtime.interpreter"
    hint = "pip install 'edge-runtime[tflite]' (pins numpy<2)"
    # tflite-runtime 2.14 builds the model without flatbuffer verification: a truncated file segfaults the process.
    verify_structure = True

    @classmethod
    def _numpy_compatible(cls) -> bool:
        # tflite-runtime <= 2.14 is compiled against numpy 1.x; under numpy 2 creating an interpreter fails.
        if int(np.__version__.split(".")[0]) < 2:
            return True
        try:
            from importlib.metadata import version

            major, minor = (int(p) for p in version("tflite-runtime").split(".")[:2])
        except Exception:
            return False
        return (major, minor) > (2, 14)
