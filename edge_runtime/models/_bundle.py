"""Model bundles: a directory (or a ``.tar.gz`` of one) holding ``manifest.json``, the model file, and optionally
``signature.json``.

:func:`package_bundle` builds one from a model file, :func:`verify_bundle` checks one (manifest, size, sha256,
signature), and :func:`check_health` runs a manifest's health check on an opened backend.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, BundleError, HealthCheckError, IntegrityError, ModelError

from ._archive import extract_archive, is_archive, strip_archive_suffix, write_archive
from ._backend import InferenceBackend, format_of, open_backend
from ._fsutil import copy_file_synced, fsync_dir, read_bundle_file, remove_tree, sha256_file, write_file_atomic
from ._manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    FeatureInput,
    HealthCheck,
    Manifest,
    Quantization,
    TensorInfo,
)
from ._signing import Signature, TrustedKeys, sign_bytes, verify_signature

MODEL_FILE_NAMES = {"onnx": "model.onnx", "tflite": "model.tflite"}


@dataclass(frozen=True)
class Bundle:
    """An unpacked bundle directory, with its manifest parsed (not yet verified: call :meth:`verify`)."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature: Signature | None

    @classmethod
    def open(cls, path: str | Path) -> Bundle:
        """Read ``manifest.json`` (and ``signature.json`` if present) from the bundle directory ``path``."""
        root = Path(path)
        if not root.is_dir():
            raise BundleError("bundle directory does not exist", path=root)
        manifest_path = root / MANIFEST_FILE
        raw = read_bundle_file(manifest_path, MAX_MANIFEST_BYTES, "manifest")
        manifest = Manifest.from_json(raw, path=manifest_path)
        sig_path = root / SIGNATURE_FILE
        signature = None
        if sig_path.exists() or sig_path.is_symlink():
            signature = Signature.from_json(read_bundle_file(sig_path, MAX_SIGNATURE_BYTES, "signature"), path=sig_path)
        return cls(root, manifest, raw, signature)

    @property
    def model_path(self) -> Path:
        """The model file inside the bundle."""
        return self.path / self.manifest.model_file

    @cached_property
    def digest(self) -> str:
        """sha256 of ``manifest.json``'s bytes: identifies the bundle's whole content (the manifest pins the model)."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def check_integrity(self) -> None:
        """Check the model file exists and has the manifest's size and sha256; raise :class:`IntegrityError`."""
        model = self.model_path
        if not model.is_file():
            raise BundleError(f"model file {self.manifest.model_file!r} is missing", path=self.path, field="model_file")
        actual_size = model.stat().st_size
        if actual_size != self.manifest.size:
            raise IntegrityError(
                f"model file has {actual_size} bytes, the manifest declares {self.manifest.size}",
                path=model,
                field="size",
            )
        actual_sha, _ = sha256_file(model)
        if actual_sha != self.manifest.sha256:
            raise IntegrityError(
                f"model file sha256 is {actual_sha}, the manifest declares {self.manifest.sha256}",
                path=model,
                field="sha256",
            )

    def verify(self, *, trusted_keys: Any = None, require_signature: bool | None = None) -> str | None:
        """Check size, sha256 and (when required or verifiable) the signature; return the signing key id or None.

        ``require_signature`` defaults to true when ``trusted_keys`` is given. A signature present while keys are
        given is always checked, so an altered signed bundle never passes.
        """
        keys = TrustedKeys.coerce(trusted_keys)
        if require_signature is None:
            require_signature = keys is not None
        self.check_integrity()
        if require_signature:
            return verify_signature(self.manifest_bytes, self.signature, keys)
        if self.signature is not None and keys is not None:
            return keys.verify(self.manifest_bytes, self.signature)
        return None


@contextmanager
def open_bundle(path: str | Path) -> Iterator[Bundle]:
    """Open a bundle directory, or unpack an archive into a temporary directory for the ``with`` block."""
    source = Path(path)
    if not is_archive(source):
        yield Bundle.open(source)
        return
    with tempfile.TemporaryDirectory(prefix="edge-runtime-bundle-") as tmp:
        extract_archive(source, Path(tmp))
        yield Bundle.open(tmp)


def verify_bundle(path: str | Path, *, trusted_keys: Any = None, require_signature: bool | None = None) -> Manifest:
    """Verify the bundle directory or archive at ``path`` and return its manifest.

    Raises :class:`BundleError` (malformed), :class:`IntegrityError` (size/sha256) or
    :class:`~edge_runtime.SignatureError`.
    """
    with open_bundle(path) as bundle:
        bundle.verify(trusted_keys=trusted_keys, require_signature=require_signature)
        return bundle.manifest


# --- health check --------------------------------------------------------------------------------------------------


def check_signature_matches(backend: InferenceBackend, manifest: Manifest) -> None:
    """Raise :class:`HealthCheckError` when the model's input/output names differ from the manifest's."""
    for what, declared, actual in (
        ("inputs", manifest.inputs, backend.inputs),
        ("outputs", manifest.outputs, backend.outputs),
    ):
        want = [t.name for t in declared]
        got = [t.name for t in actual]
        if sorted(want) != sorted(got):
            raise HealthCheckError(
                f"{manifest.name} v{manifest.version}: manifest {what} {want} but the model has {got}"
            )


def check_health(backend: InferenceBackend, manifest: Manifest) -> dict[str, float]:
    """Warm up ``backend`` and run the manifest's health check; return each checked output's max abs error.

    Without a health check, one warm-up run on zeros (batch of 1) must succeed. Raises :class:`HealthCheckError`.
    """
    label = f"{manifest.name} v{manifest.version}"
    check_signature_matches(backend, manifest)
    check = manifest.health_check
    if check is None:
        feeds = {
            t.name: np.zeros(tuple(1 if d is None else d for d in t.shape), dtype=t.dtype) for t in manifest.inputs
        }
    else:
        feeds = check.input_arrays(manifest.inputs)
    try:
        outputs = backend.run(feeds)
    except ModelError as exc:
        raise HealthCheckError(f"{label}: warm-up run failed: {exc}") from exc
    except Exception as exc:  # an engine's own error type; the model is unusable either way
        raise HealthCheckError(f"{label}: warm-up run failed: {type(exc).__name__}: {exc}") from exc
    if check is None:
        return {}
    errors: dict[str, float] = {}
    for name, want in check.expected_arrays().items():
        got = outputs.get(name)
        if got is None:
            raise HealthCheckError(
                f"{label}: health check expects output {name!r}, the model returned {sorted(outputs)}"
            )
        got64 = np.asarray(got, dtype=np.float64)
        if got64.shape != want.shape:
            raise HealthCheckError(f"{label}: output {name!r} has shape {got64.shape}, expected {want.shape}")
        if not np.isfinite(got64).all():
            raise HealthCheckError(f"{label}: output {name!r} contains NaN or infinity")
        err = float(np.max(np.abs(got64 - want))) if want.size else 0.0
        if err > check.atol:
            raise HealthCheckError(f"{label}: output {name!r} is off by {err:.6g}, more than atol {check.atol:g}")
        errors[name] = err
    return errors


# --- packaging -----------------------------------------------------------------------------------------------------


def package_bundle(
    model_file: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: int,
    inputs: Sequence[TensorInfo | Mapping[str, Any]] | None = None,
    outputs: Sequence[TensorInfo | Mapping[str, Any]] | None = None,
    features: Sequence[FeatureInput | Mapping[str, Any] | str] = (),
    output_labels: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    quantization: Quantization | Mapping[str, Any] | str | None = None,
    health_check: HealthCheck | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    serving: Mapping[str, Any] | None = None,
    archive: bool = False,
    signing_key: Any = None,
    backend: str | None = None,
) -> Path:
    """Build a bundle from ``model_file`` and return its path.

    ``out_dir`` is the bundle directory to create (replaced if it exists); with ``archive=True`` a
    ``<out_dir>.tar.gz`` archive is written instead (or ``out_dir`` itself when it ends in ``.tar.gz``).

    ``inputs``/``outputs`` default to what the model reports. ``features`` are :class:`FeatureInput`, dicts of
    its fields, or plain ``"view:feature"`` refs. ``output_labels`` maps output name → labels (a plain list
    labels the first output). ``quantization`` is a scheme name, a dict or a :class:`Quantization`.
    ``health_check`` is a :class:`HealthCheck` or ``{"inputs": {...} | array, "expected": {...} (optional:
    computed by running the model), "atol": float}``. The model is opened and the health check run before
    anything is written. ``signing_key`` (a private key path or object) signs the bundle too.
    """
    src = Path(model_file)
    if not src.is_file():
        raise BundleError("model file does not exist", path=src)
    fmt = format_of(src)
    be = _open_for_packaging(
        src, fmt, backend, needed=inputs is None or outputs is None or _needs_expected(health_check)
    )
    try:
        in_specs = _tensors(inputs, be.inputs if be else None, "inputs")
        out_specs = _tensors(outputs, be.outputs if be else None, "outputs")
        out_specs = _apply_labels(out_specs, output_labels)
        feats = tuple(_feature(f, i) for i, f in enumerate(features))
        quant = _quantization(quantization)
        sha, size = sha256_file(src)
        draft = Manifest(
            name=name,
            version=version,
            format=fmt,
            model_file=MODEL_FILE_NAMES[fmt],
            sha256=sha,
            size=size,
            inputs=in_specs,
            outputs=out_specs,
            features=feats,
            quantization=quant,
            serving=serving,
            metadata=metadata,
        )
        check = _health(health_check, draft, be)
        manifest = Manifest(**{**_fields(draft), "health_check": check})
        if be is not None:
            check_health(be, manifest)
    finally:
        if be is not None:
            be.close()
    return _write_bundle(src, Path(out_dir), manifest, archive=archive, signing_key=signing_key)


def _needs_expected(health_check: HealthCheck | Mapping[str, Any] | None) -> bool:
    return isinstance(health_check, Mapping) and health_check.get("expected") is None


def _open_for_packaging(src: Path, fmt: str, backend: str | None, *, needed: bool) -> InferenceBackend | None:
    try:
        return open_backend(src, backend=backend, fmt=fmt)
    except BackendUnavailableError:
        if needed:
            raise
        return None  # everything was given explicitly; the device checks the model when it activates it
    except ModelError as exc:
        raise BundleError(f"the model does not load: {exc}", path=src) from exc
    except Exception as exc:  # the engine's own parse error for a file that is not a model
        raise BundleError(f"the model does not load: {type(exc).__name__}: {exc}", path=src) from exc


def _tensors(
    given: Sequence[TensorInfo | Mapping[str, Any]] | None, reported: Sequence[Any] | None, what: str
) -> tuple[TensorInfo, ...]:
    if given is None:
        assert reported is not None
        return tuple(TensorInfo(name=s.name, dtype=np.dtype(s.dtype).name, shape=tuple(s.shape)) for s in reported)
    out = []
    for i, item in enumerate(given):
        if isinstance(item, TensorInfo):
            out.append(item)
        elif isinstance(item, Mapping):
            try:
                out.append(TensorInfo(**{**item, "shape": tuple(item["shape"])}))
            except (TypeError, KeyError) as exc:
                raise BundleError(f"needs name, dtype and shape ({exc})", field=f"{what}[{i}]") from None
        else:
            raise BundleError(f"expected a TensorInfo or dict, got {type(item).__name__}", field=f"{what}[{i}]")
    return tuple(out)


def _apply_labels(
    specs: tuple[TensorInfo, ...], labels: Mapping[str, Sequence[str]] | Sequence[str] | None
) -> tuple[TensorInfo, ...]:
    if labels is None:
        return specs
    by_name = dict(labels) if isinstance(labels, Mapping) else {specs[0].name: labels}
    unknown = set(by_name) - {s.name for s in specs}
    if unknown:
        raise BundleError(f"labels given for unknown outputs {sorted(unknown)}", field="output_labels")
    return tuple(
        TensorInfo(s.name, s.dtype, s.shape, tuple(by_name[s.name])) if s.name in by_name else s for s in specs
    )


def _feature(item: FeatureInput | Mapping[str, Any] | str, i: int) -> FeatureInput:
    if isinstance(item, FeatureInput):
        return item
    try:
        if isinstance(item, str):
            return FeatureInput(ref=item)
        return FeatureInput(**item)
    except BundleError as exc:
        raise BundleError(str(exc), field=f"features[{i}]") from None
    except TypeError as exc:
        raise BundleError(f"unexpected keys ({exc})", field=f"features[{i}]") from None


def _quantization(value: Quantization | Mapping[str, Any] | str | None) -> Quantization:
    if value is None:
        return Quantization()
    if isinstance(value, Quantization):
        return value
    if isinstance(value, str):
        return Quantization(scheme=value)
    return Quantization(**value)


def _health(
    value: HealthCheck | Mapping[str, Any] | None, draft: Manifest, be: InferenceBackend | None
) -> HealthCheck | None:
    if value is None or isinstance(value, HealthCheck):
        return value
    raw_inputs = value.get("inputs")
    if raw_inputs is None:
        raise BundleError("needs 'inputs'", field="health_check")
    if not isinstance(raw_inputs, Mapping):
        raw_inputs = {draft.inputs[0].name: raw_inputs}
    dtypes = {t.name: t.dtype for t in draft.inputs}
    arrays = {k: np.asarray(v, dtype=dtypes.get(k, "float32")) for k, v in raw_inputs.items()}
    expected = value.get("expected")
    if expected is None:
        assert be is not None
        try:
            expected = be.run(arrays)
        except ModelError as exc:
            raise BundleError(f"running the sample inputs failed: {exc}", field="health_check") from exc
    elif not isinstance(expected, Mapping):
        expected = {draft.outputs[0].name: expected}
    return HealthCheck(inputs=arrays, expected=dict(expected), atol=value.get("atol", 1e-4))


def _fields(manifest: Manifest) -> dict[str, Any]:
    return {k: getattr(manifest, k) for k in manifest.__dataclass_fields__}


def _write_bundle(src: Path, out: Path, manifest: Manifest, *, archive: bool, signing_key: Any) -> Path:
    archive_path = None
    if archive or is_archive(out):
        archive_path = out if is_archive(out) else out.with_name(out.name + ".tar.gz")
        out = archive_path.with_name(strip_archive_suffix(archive_path.name))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        sha, size = copy_file_synced(src, tmp / manifest.model_file)
        if (sha, size) != (manifest.sha256, manifest.size):
            raise IntegrityError("model file changed while it was being packaged", path=src)
        raw = manifest.to_json()
        write_file_atomic(tmp / MANIFEST_FILE, raw)
        if signing_key is not None:
            write_file_atomic(tmp / SIGNATURE_FILE, sign_bytes(raw, signing_key).to_json())
        os.chmod(tmp, 0o755)
        if archive_path is not None:
            return write_archive(tmp, archive_path, arcname=out.name)
        if out.exists():
            # Move the old bundle aside first so the final name always holds one complete bundle.
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            remove_tree(old)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
        return out
    finally:
        remove_tree(tmp)
