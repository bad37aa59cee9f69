"""Model bundles: a directory (or a ``.tar.gz`` of one) holding ``manifest.json``, the model file, and optionally
``signature.json``.

:func:`package_bundle` builds one from a model file, :func:`verify_bundle` checks one (manifest, size, sha256,
signature), and :func:`check_health` runs a manifest's health check on an opened backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import BackendUnavailableError, BundleError, HealthCheckError, IntegrityError, ModelError

from ._backend import InferenceBackend, format_of, open_backend
from ._fsutil import copy_file_synced, fsync_dir, remove_tree, sha256_file, write_file_atomic
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
    read_bundle_file,
)
from ._signing import Signature, TrustedKeys, sign_bytes, verify_signature

MODEL_FILE_NAMES = {"onnx": "model.onnx", "tflite": "model.tflite"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_MAX_MEMBERS = 16
#: What an archive may hold beyond the model file its manifest declares: the manifest, the signature, side files.
_SIDE_FILES_ALLOWANCE = 16 * 1024 * 1024
#: The unpacked size no archive may exceed, whatever its manifest says.
DEFAULT_MAX_ARCHIVE_BYTES = 8 * 1024**3


def is_archive(path: str | Path) -> bool:
    """Whether ``path`` names a bundle archive (``.tar.gz`` / ``.tgz``) rather than a directory."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def strip_archive_suffix(name: str) -> str:
    """``name`` without its ``.tar.gz``/``.tgz`` suffix (the bundle's directory name inside the archive)."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


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


# --- archives -----------------------------------------------------------------------------------------------------


def extract_archive(archive: str | Path, dest: Path, *, max_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES) -> None:
    """Unpack a bundle archive's plain files into the existing directory ``dest`` (flat), each fsynced.

    Only regular files are accepted, at the top level or under one top-level directory; links, devices, absolute
    paths and ``..`` are refused, so an archive cannot write outside ``dest``. Budgets apply before a byte is
    written: the member count is checked while the archive is read (not after listing it whole), and the unpacked
    size may not exceed what the archive's own manifest declares (the model's ``size`` plus a small allowance for
    the manifest, signature and side files), nor ``max_bytes`` in any case — so a compression bomb costs
    decompression time, never disk.
    """
    src = Path(archive)
    try:
        with tarfile.open(src, "r:gz") as tar:
            files: list[tuple[str, tarfile.TarInfo]] = []
            total = 0
            manifest_member: tarfile.TarInfo | None = None
            for count, member in enumerate(tar, start=1):
                if count > _MAX_MEMBERS:
                    raise BundleError(f"archive has more than {_MAX_MEMBERS} entries; a bundle has a handful", path=src)
                if member.isdir():
                    continue
                name = _flat_name(member, src)
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"archive unpacks to more than the {max_bytes:,}-byte budget", path=src)
                if name == MANIFEST_FILE:
                    manifest_member = member
                files.append((name, member))
            if manifest_member is None:
                raise BundleError(f"archive holds no {MANIFEST_FILE}", path=src)
            budget = _declared_budget(tar, manifest_member, src)
            if total > budget:
                raise BundleError(
                    f"archive unpacks to {total:,} bytes, but its manifest declares a model of "
                    f"{budget - _SIDE_FILES_ALLOWANCE:,} bytes (plus {_SIDE_FILES_ALLOWANCE:,} for small files)",
                    path=src,
                )
            for name, member in files:
                fobj = tar.extractfile(member)
                if fobj is None:  # pragma: no cover - regular files always have data
                    raise BundleError(f"cannot read archive entry {member.name!r}", path=src)
                target = dest / name
                if target.exists():
                    raise BundleError(f"archive holds {name!r} twice", path=src)
                with open(target, "xb") as out:
                    while chunk := fobj.read(1 << 20):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not src.exists():
            raise BundleError("bundle archive does not exist", path=src) from exc
        raise BundleError(f"not a readable .tar.gz bundle archive ({exc})", path=src) from exc
    fsync_dir(dest)


def _declared_budget(tar: tarfile.TarFile, member: tarfile.TarInfo, src: Path) -> int:
    """The bytes an archive may unpack to, by its own manifest's declared model size."""
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{MANIFEST_FILE} is larger than the {MAX_MANIFEST_BYTES:,}-byte limit", path=src)
    fobj = tar.extractfile(member)
    raw = fobj.read(MAX_MANIFEST_BYTES + 1) if fobj is not None else b""
    try:
        size = json.loads(raw).get("size")
    except (ValueError, AttributeError, RecursionError):
        raise BundleError(f"{MANIFEST_FILE} in the archive is not a JSON object", path=src) from None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BundleError(f"{MANIFEST_FILE} in the archive declares no model size", path=src)
    return size + _SIDE_FILES_ALLOWANCE


def _flat_name(member: tarfile.TarInfo, src: Path) -> str:
    if not member.isfile():
        raise BundleError(f"archive entry {member.name!r} is not a regular file", path=src)
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if member.name.startswith("/") or ".." in parts or not parts or len(parts) > 2:
        raise BundleError(f"archive entry {member.name!r} has an unsafe or nested path", path=src)
    return parts[-1]


def write_archive(bundle_dir: str | Path, out_path: str | Path, *, arcname: str | None = None) -> Path:
    """Write the bundle directory as a reproducible ``.tar.gz`` (fixed mtime/owner, sorted), atomically."""
    root = Path(bundle_dir)
    out = Path(out_path)
    top = arcname or root.name
    buf = io.BytesIO()
    # gzip's own header mtime is pinned too, so the same bundle always gives the same bytes.
    import gzip

    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{top}/{path.name}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out, buf.getvalue())
    return out


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
