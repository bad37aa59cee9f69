"""Ed25519 signatures over a bundle's ``manifest.json``.

The manifest carries the sha256 and size of the model file, so a signature over the manifest's exact bytes covers
the model as well. ``signature.json`` sits beside the manifest::

    {"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}

A key id is the first 16 hex characters of the sha256 of the raw 32-byte public key. Keys are PEM files
(PKCS#8 private, SubjectPublicKeyInfo public). ``cryptography`` is imported only inside these functions, so
``import edge_runtime`` never loads it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime._errors import BundleError, SignatureError

ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "{name}.key"
PUBLIC_KEY_FILE = "{name}.pub"

#: What may be given as a trusted key: a PEM file path, PEM bytes, or a ``cryptography`` Ed25519 public key.
TrustedKey = Any


@dataclass(frozen=True)
class Signature:
    """A parsed ``signature.json``."""

    key_id: str
    signature: bytes
    algorithm: str = ALGORITHM

    def to_json(self) -> bytes:
        """The bytes written to ``signature.json``."""
        body = {
            "algorithm": self.algorithm,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return (json.dumps(body, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, *, path: str | Path | None = None) -> Signature:
        """Parse ``signature.json`` bytes; a malformed file raises :class:`SignatureError` naming it."""
        where = f"{path}: " if path else ""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise SignatureError(f"{where}signature file is not valid JSON: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise SignatureError(f"{where}signature file is not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or set(data) != {"algorithm", "key_id", "signature"}:
            raise SignatureError(f"{where}signature file must hold exactly algorithm, key_id and signature")
        if data["algorithm"] != ALGORITHM:
            raise SignatureError(f"{where}algorithm {data['algorithm']!r} is not supported; expected {ALGORITHM!r}")
        if not isinstance(data["key_id"], str) or not isinstance(data["signature"], str):
            raise SignatureError(f"{where}key_id and signature must be strings")
        try:
            sig = base64.b64decode(data["signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"{where}signature is not valid base64") from exc
        return cls(key_id=data["key_id"], signature=sig)


@dataclass(frozen=True)
class KeyPairFiles:
    """Where :func:`generate_keypair` wrote a key pair, and the public key's id."""

    private_key: Path
    public_key: Path
    key_id: str


def key_id(public_key: Any) -> str:
    """The id of an Ed25519 public key: first 16 hex characters of the sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: str | Path, *, name: str = "signing") -> KeyPairFiles:
    """Create an Ed25519 key pair as ``<name>.key`` (private, mode 0600) and ``<name>.pub`` in ``out_dir``.

    Existing files are never overwritten: that would silently orphan every bundle signed with the old key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / PRIVATE_KEY_FILE.format(name=name)
    public_path = out / PUBLIC_KEY_FILE.format(name=name)
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} already exists; choose another --name or directory")
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL + 0600 from the start: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
        fh.flush()
        os.fsync(fh.fileno())
    public_path.write_bytes(public_pem)
    return KeyPairFiles(private_path, public_path, key_id(private.public_key()))


def load_private_key(key: Any) -> Any:
    """An Ed25519 private key from a PEM file path, PEM bytes, or a key object (returned as is)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    pem, where = _read_pem(key, "private key")
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SignatureError(f"{where}: expected an Ed25519 private key, got {type(loaded).__name__}")
    return loaded


def load_public_key(key: Any) -> Any:
    """An Ed25519 public key from a PEM file path, PEM bytes, or a key object (returned as is)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    pem, where = _read_pem(key, "public key")
    try:
        loaded = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc})") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise SignatureError(f"{where}: expected an Ed25519 public key, got {type(loaded).__name__}")
    return loaded


def _read_pem(key: Any, what: str) -> tuple[bytes, str]:
    if isinstance(key, bytes):
        return key, f"{what} bytes"
    if isinstance(key, (str, os.PathLike)):
        path = Path(key)
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise SignatureError(f"cannot read {what} {path} ({exc.strerror or exc})") from exc
    raise SignatureError(f"a {what} must be a PEM file path, PEM bytes or an Ed25519 key, got {type(key).__name__}")


class TrustedKeys:
    """A set of trusted Ed25519 public keys, looked up by key id."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[str, Any] = {}
        for key in keys:
            public = load_public_key(key)
            self._keys[key_id(public)] = public

    @classmethod
    def coerce(cls, keys: TrustedKeys | Iterable[TrustedKey] | None) -> TrustedKeys | None:
        """``keys`` as a :class:`TrustedKeys` (None stays None)."""
        if keys is None or isinstance(keys, TrustedKeys):
            return keys
        if isinstance(keys, (str, bytes, os.PathLike)):
            keys = [keys]
        return cls(keys)

    @property
    def ids(self) -> list[str]:
        """The ids of the trusted keys, sorted."""
        return sorted(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, manifest_bytes: bytes, signature: Signature) -> str:
        """Check ``signature`` over ``manifest_bytes``; return the key id or raise :class:`SignatureError`."""
        from cryptography.exceptions import InvalidSignature

        public = self._keys.get(signature.key_id)
        if public is None:
            trusted = ", ".join(self.ids) or "(none configured)"
            raise SignatureError(f"bundle is signed by untrusted key {signature.key_id}; trusted keys: {trusted}")
        try:
            public.verify(signature.signature, manifest_bytes)
        except InvalidSignature:
            raise SignatureError(
                f"signature by key {signature.key_id} does not match manifest.json: "
                "the bundle was altered after signing"
            ) from None
        return signature.key_id


def sign_bytes(manifest_bytes: bytes, private_key: Any) -> Signature:
    """Sign ``manifest_bytes`` with ``private_key`` (path, PEM bytes or key object)."""
    key = load_private_key(private_key)
    return Signature(key_id=key_id(key.public_key()), signature=key.sign(manifest_bytes))


def sign_bundle(path: str | Path, private_key: Any) -> Signature:
    """Sign the bundle at ``path`` (a directory or a ``.tar.gz`` archive), replacing any earlier signature.

    The bundle is verified first (size and sha256 of the model), so a signature never vouches for a broken one.
    """
    from ._archive import is_archive, strip_archive_suffix, write_archive
    from ._bundle import Bundle, open_bundle
    from ._fsutil import write_file_atomic

    target = Path(path)
    if is_archive(target):
        with open_bundle(target) as bundle:
            bundle.verify(require_signature=False)
            signature = sign_bytes(bundle.manifest_bytes, private_key)
            write_file_atomic(bundle.path / "signature.json", signature.to_json())
            write_archive(bundle.path, target, arcname=strip_archive_suffix(target.name))
        return signature
    if not target.is_dir():
        raise BundleError("no bundle directory or .tar.gz archive here", path=target)
    bundle = Bundle.open(target)
    bundle.verify(require_signature=False)
    signature = sign_bytes(bundle.manifest_bytes, private_key)
    write_file_atomic(target / "signature.json", signature.to_json())
    return signature


def verify_signature(
    manifest_bytes: bytes, signature: Signature | None, trusted_keys: TrustedKeys | Mapping[str, Any] | None
) -> str:
    """Require a valid signature from one of ``trusted_keys`` over ``manifest_bytes``; return its key id."""
    if signature is None:
        raise SignatureError("bundle is not signed (no signature.json) and a signature is required")
    keys = (
        trusted_keys
        if isinstance(trusted_keys, TrustedKeys)
        else TrustedKeys.coerce(None if trusted_keys is None else list(trusted_keys.values()))
    )
    if keys is None or not len(keys):
        raise SignatureError("a signature is required but no trusted keys are configured")
    return keys.verify(manifest_bytes, signature)
