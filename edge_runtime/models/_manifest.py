"""The manifest of a model bundle: what the model is, how to feed it, and how to check it is healthy.

``manifest.json`` sits beside the model file in a bundle directory. It carries the sha256 and size of the model
file, so a signature over the manifest's exact bytes covers the model too. :class:`Manifest` is a frozen
dataclass validated on construction; :meth:`Manifest.from_json` turns every parsing problem into a
:class:`~edge_runtime.BundleError` that names the file and the field.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BundleError

from ._fsutil import read_bundle_file
from ._serving_spec import ServingDefaults, parse_serving

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
#: The largest ``manifest.json`` read from a file or an archive (the sync agent refuses larger manifests too).
MAX_MANIFEST_BYTES = 1024 * 1024
#: The largest ``signature.json`` read.
MAX_SIGNATURE_BYTES = 64 * 1024
FORMATS = ("onnx", "tflite")
QUANTIZATION_SCHEMES = ("none", "dynamic-int8", "static-int8", "full-int8")
DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CREATED_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_REQUIRED_KEYS = (
    "format_version",
    "name",
    "version",
    "format",
    "model_file",
    "sha256",
    "size",
    "created_at",
    "inputs",
    "outputs",
)
_TOP_KEYS = {*_REQUIRED_KEYS, "features", "quantization", "health_check", "serving", "metadata"}


def utc_timestamp(when: _dt.datetime | None = None) -> str:
    """``when`` (default: now) as ISO-8601 UTC with microseconds and a ``Z``, the manifest's ``created_at`` form."""
    moment = (when or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fail(message: str, fld: str) -> BundleError:
    return BundleError(message, field=fld)


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the manifest declares it.

    ``shape`` uses ``None`` for a dynamic dimension (the batch). ``labels`` names the entries of an output's last
    dimension (class names), or is None.
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _fail("must be a non-empty string", "name")
        if self.dtype not in DTYPES:
            raise _fail(f"unknown dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}", "dtype")
        object.__setattr__(self, "shape", tuple(self.shape))
        for dim in self.shape:
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
                raise _fail(f"dimension {dim!r} must be a non-negative integer or null", "shape")
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(self.labels))
            if not all(isinstance(label, str) for label in self.labels):
                raise _fail("labels must be strings", "labels")

    def to_dict(self, *, with_labels: bool) -> dict[str, Any]:
        """The JSON form (``labels`` only for outputs)."""
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if with_labels:
            out["labels"] = list(self.labels) if self.labels is not None else None
        return out


@dataclass(frozen=True)
class FeatureInput:
    """One entry of the model's input vector: a feature reference, its default, and optional standardisation.

    ``ref`` is ``"view:feature"`` (``"request:name"`` for request data). A missing or expired value is replaced by
    ``default`` (in the feature's own units); when ``mean`` and ``std`` are set, the value is then standardised as
    ``(x - mean) / std``.
    """

    ref: str
    default: float = 0.0
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ref, str) or ":" not in self.ref or self.ref.startswith(":") or self.ref.endswith(":"):
            raise _fail(f"ref {self.ref!r} must look like 'view:feature'", "ref")
        if not _is_finite_number(self.default):
            raise _fail(f"default {self.default!r} must be a finite number", "default")
        object.__setattr__(self, "default", float(self.default))
        if (self.mean is None) != (self.std is None):
            raise _fail("mean and std must be given together (or neither)", "mean")
        if self.mean is not None:
            if not _is_finite_number(self.mean):
                raise _fail(f"mean {self.mean!r} must be a finite number", "mean")
            if not _is_finite_number(self.std) or float(self.std) <= 0:  # type: ignore[arg-type]
                raise _fail(f"std {self.std!r} must be a finite number > 0", "std")
            object.__setattr__(self, "mean", float(self.mean))
            object.__setattr__(self, "std", float(self.std))  # type: ignore[arg-type]

    @property
    def view(self) -> str:
        """The feature view (or ``"request"``) part of ``ref``."""
        return self.ref.split(":", 1)[0]

    @property
    def feature(self) -> str:
        """The feature name part of ``ref``."""
        return self.ref.split(":", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"ref": self.ref, "default": self.default, "mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class Quantization:
    """How the model was quantized: ``scheme`` is one of :data:`QUANTIZATION_SCHEMES`; ``notes`` is free text."""

    scheme: str = "none"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.scheme not in QUANTIZATION_SCHEMES:
            raise _fail(f"unknown scheme {self.scheme!r}; expected one of {', '.join(QUANTIZATION_SCHEMES)}", "scheme")
        if not isinstance(self.notes, str):
            raise _fail("notes must be a string", "notes")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"scheme": self.scheme, "notes": self.notes}


@dataclass(frozen=True)
class HealthCheck:
    """Sample inputs, the outputs they must produce, and the absolute tolerance for the comparison.

    Values are kept as nested lists (their JSON form); :meth:`input_arrays` and :meth:`expected_arrays` give numpy.
    """

    inputs: Mapping[str, Any]
    expected: Mapping[str, Any]
    atol: float = 1e-4

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, Mapping) or not self.inputs:
            raise _fail("inputs must be a non-empty object of input name -> nested list", "inputs")
        if not isinstance(self.expected, Mapping) or not self.expected:
            raise _fail("expected must be a non-empty object of output name -> nested list", "expected")
        object.__setattr__(self, "inputs", {str(k): _as_nested_list(v, f"inputs.{k}") for k, v in self.inputs.items()})
        object.__setattr__(
            self, "expected", {str(k): _as_nested_list(v, f"expected.{k}") for k, v in self.expected.items()}
        )
        if not _is_finite_number(self.atol) or float(self.atol) < 0:
            raise _fail(f"atol {self.atol!r} must be a finite number >= 0", "atol")
        object.__setattr__(self, "atol", float(self.atol))

    def input_arrays(self, specs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
        """The sample inputs as arrays of each input's declared dtype."""
        dtypes = {spec.name: spec.dtype for spec in specs}
        return {name: np.asarray(value, dtype=dtypes.get(name, "float32")) for name, value in self.inputs.items()}

    def expected_arrays(self) -> dict[str, np.ndarray]:
        """The expected outputs as float64 arrays."""
        return {name: np.asarray(value, dtype=np.float64) for name, value in self.expected.items()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"inputs": dict(self.inputs), "expected": dict(self.expected), "atol": self.atol}


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to know about one model version. See ``docs/models.md`` for each field."""

    name: str
    version: int
    format: str
    model_file: str
    sha256: str
    size: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    created_at: str = field(default_factory=utc_timestamp)
    features: tuple[FeatureInput, ...] = ()
    quantization: Quantization = field(default_factory=Quantization)
    health_check: HealthCheck | None = None
    serving: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise _fail(
                f"unsupported format_version {self.format_version!r}; expected {FORMAT_VERSION}", "format_version"
            )
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise _fail(f"name {self.name!r} must be 1-128 characters of letters, digits, '.', '_' or '-'", "name")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise _fail(f"version {self.version!r} must be an integer >= 1", "version")
        if self.format not in FORMATS:
            raise _fail(f"format {self.format!r} must be one of {', '.join(FORMATS)}", "format")
        if (
            not isinstance(self.model_file, str)
            or not self.model_file
            or "/" in self.model_file
            or "\\" in self.model_file
            or self.model_file in (".", "..", MANIFEST_FILE, SIGNATURE_FILE)
        ):
            raise _fail(f"model_file {self.model_file!r} must be a plain file name inside the bundle", "model_file")
        if not isinstance(self.sha256, str) or not _SHA_RE.match(self.sha256):
            raise _fail("sha256 must be 64 lowercase hex characters", "sha256")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise _fail(f"size {self.size!r} must be a non-negative integer", "size")
        if not isinstance(self.created_at, str) or not _CREATED_RE.match(self.created_at):
            raise _fail(
                f"created_at {self.created_at!r} must be ISO-8601 UTC like 2026-01-31T12:00:00.000000Z", "created_at"
            )
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "features", tuple(self.features))
        for what in ("inputs", "outputs"):
            specs = getattr(self, what)
            if not specs:
                raise _fail("at least one tensor is required", what)
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise _fail(f"duplicate tensor names in {names}", what)
        if self.features:
            width = self.inputs[0].shape[-1] if self.inputs[0].shape else None
            if width is not None and width != len(self.features):
                raise _fail(
                    f"{len(self.features)} features listed but input {self.inputs[0].name!r} has width {width}",
                    "features",
                )
        if self.health_check is not None:
            self._check_health_names(self.health_check)
        for what in ("serving", "metadata"):
            value = getattr(self, what)
            if value is not None and not isinstance(value, Mapping):
                raise _fail("must be an object or null", what)
            if value is not None:
                # Refused here, not when writing: manifest.json is strict JSON, with no NaN or Infinity.
                try:
                    json.dumps(value, allow_nan=False)
                except (TypeError, ValueError) as exc:
                    raise _fail(
                        f"must hold plain JSON values (finite numbers, strings, lists, objects): {exc}", what
                    ) from None
        parse_serving(self.serving)

    @property
    def serving_defaults(self) -> ServingDefaults:
        """The ``serving`` section, typed (checked when the manifest was built, so this cannot fail)."""
        return parse_serving(self.serving)

    def _check_health_names(self, check: HealthCheck) -> None:
        inputs = {spec.name for spec in self.inputs}
        outputs = {spec.name for spec in self.outputs}
        if set(check.inputs) != inputs:
            raise _fail(f"inputs name {sorted(check.inputs)}; the model's inputs are {sorted(inputs)}", "health_check")
        unknown = set(check.expected) - outputs
        if unknown:
            raise _fail(
                f"expected names unknown outputs {sorted(unknown)}; outputs are {sorted(outputs)}", "health_check"
            )

    # --- features ---------------------------------------------------------------------------------------------

    def assemble(self, values: np.ndarray) -> np.ndarray:
        """Turn raw feature values into the first input's float32 matrix.

        ``values`` is ``(rows, len(features))`` in the manifest's feature order with NaN for a missing value;
        missing values get their feature's default, then standardisation applies where configured.
        """
        x = np.array(values, dtype=np.float64, copy=True)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.shape[-1] != len(self.features):
            raise BundleError(
                f"got {x.shape[-1]} feature columns, the manifest lists {len(self.features)}", field="features"
            )
        defaults, means, stds = self._feature_arrays()
        missing = np.isnan(x)
        if missing.any():
            x = np.where(missing, defaults, x)
        return ((x - means) / stds).astype(np.float32)

    def _feature_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = self.__dict__.get("_feature_cache")
        if cached is None:
            cached = (
                np.array([f.default for f in self.features], dtype=np.float64),
                np.array([f.mean if f.mean is not None else 0.0 for f in self.features], dtype=np.float64),
                np.array([f.std if f.std is not None else 1.0 for f in self.features], dtype=np.float64),
            )
            object.__setattr__(self, "_feature_cache", cached)
        return cached

    # --- JSON ---------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, with keys in the documented order."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "model_file": self.model_file,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": self.created_at,
            "inputs": [spec.to_dict(with_labels=False) for spec in self.inputs],
            "outputs": [spec.to_dict(with_labels=True) for spec in self.outputs],
            "features": [f.to_dict() for f in self.features],
            "quantization": self.quantization.to_dict(),
            "health_check": self.health_check.to_dict() if self.health_check is not None else None,
        }
        if self.serving is not None:
            out["serving"] = dict(self.serving)
        if self.metadata is not None:
            out["metadata"] = dict(self.metadata)
        return out

    def to_json(self) -> bytes:
        """The bytes written to ``manifest.json`` (and covered by the signature)."""
        return (json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n").encode("utf-8")

    @classmethod
    def from_dict(cls, data: Any, *, path: str | Path | None = None) -> Manifest:
        """Validate and build a manifest from its JSON form; errors name ``path`` and the field."""
        try:
            return _parse(data)
        except BundleError as exc:
            raise BundleError(_bare_message(exc), path=path, field=exc.field) from None

    @classmethod
    def from_json(cls, raw: bytes | str, *, path: str | Path | None = None) -> Manifest:
        """Parse ``manifest.json`` bytes."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise BundleError("not valid JSON: nested too deeply", path=path) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError(f"not valid JSON ({exc})", path=path) from exc
        return cls.from_dict(data, path=path)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and parse a ``manifest.json`` file (a regular file of at most ``MAX_MANIFEST_BYTES``)."""
        return cls.from_json(read_bundle_file(path, MAX_MANIFEST_BYTES, "manifest"), path=path)


# --- parsing helpers ----------------------------------------------------------------------------------------------


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _as_nested_list(value: Any, fld: str) -> Any:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _fail(f"not a rectangular nested list ({exc})", fld) from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise _fail("must be a rectangular nested list of numbers", fld)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _fail("contains NaN or infinity", fld)
    return arr.tolist()


def _bare_message(exc: BundleError) -> str:
    """The message of ``exc`` without the ``path: field: `` prefix its constructor added."""
    message = str(exc)
    prefix = (f"{exc.path}: " if exc.path else "") + (f"{exc.field}: " if exc.field else "")
    return message[len(prefix) :] if message.startswith(prefix) else message


def _sub(fld: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a constructor, prefixing the field of any BundleError with ``fld``."""
    try:
        return fn(*args, **kwargs)
    except BundleError as exc:
        inner = exc.field
        raise _fail(_bare_message(exc), f"{fld}.{inner}" if inner else fld) from None
    except TypeError as exc:
        raise _fail(f"unexpected or missing keys ({exc})", fld) from None


def _obj(value: Any, fld: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"must be a JSON object, got {type(value).__name__}", fld)
    return value


def _list(value: Any, fld: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(f"must be a JSON array, got {type(value).__name__}", fld)
    return value


def _tensor(value: Any, fld: str, *, output: bool) -> TensorInfo:
    data = _obj(value, fld)
    allowed = {"name", "dtype", "shape", "labels"} if output else {"name", "dtype", "shape"}
    extra = set(data) - allowed
    if extra:
        raise _fail(f"unknown keys {sorted(extra)}; allowed: {sorted(allowed)}", fld)
    for key in ("name", "dtype", "shape"):
        if key not in data:
            raise _fail("is required", f"{fld}.{key}")
    shape = _list(data["shape"], f"{fld}.shape")
    labels = data.get("labels")
    if labels is not None:
        labels = tuple(_list(labels, f"{fld}.labels"))
    return _sub(fld, TensorInfo, name=data["name"], dtype=data["dtype"], shape=tuple(shape), labels=labels)


def _parse(data: Any) -> Manifest:
    top = _obj(data, "manifest")
    extra = set(top) - _TOP_KEYS
    if extra:
        raise _fail(f"unknown keys {sorted(extra)}", "manifest")
    for key in _REQUIRED_KEYS:
        if key not in top:
            raise _fail("is required", key)
    inputs = tuple(_tensor(v, f"inputs[{i}]", output=False) for i, v in enumerate(_list(top["inputs"], "inputs")))
    outputs = tuple(_tensor(v, f"outputs[{i}]", output=True) for i, v in enumerate(_list(top["outputs"], "outputs")))
    features = tuple(
        _sub(f"features[{i}]", FeatureInput, **_obj(v, f"features[{i}]"))
        for i, v in enumerate(_list(top.get("features", []), "features"))
    )
    quant_raw = top.get("quantization")
    quantization = (
        Quantization() if quant_raw is None else _sub("quantization", Quantization, **_obj(quant_raw, "quantization"))
    )
    hc_raw = top.get("health_check")
    health = None if hc_raw is None else _sub("health_check", HealthCheck, **_obj(hc_raw, "health_check"))
    return Manifest(
        format_version=top["format_version"],
        name=top["name"],
        version=top["version"],
        format=top["format"],
        model_file=top["model_file"],
        sha256=top["sha256"],
        size=top["size"],
        created_at=top["created_at"],
        inputs=inputs,
        outputs=outputs,
        features=features,
        quantization=quantization,
        health_check=health,
        serving=top.get("serving"),
        metadata=top.get("metadata"),
    )
