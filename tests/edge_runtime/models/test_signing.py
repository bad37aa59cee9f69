"""Ed25519 signing of bundles: keys, signatures, tampering, untrusted keys, and the CLI."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest
from _model_factory import make_bundle, write_mlp

from edge_runtime import SignatureError
from edge_runtime.cli import main
from edge_runtime.models import (
    KeyPairFiles,
    Manifest,
    Signature,
    TrustedKeys,
    generate_keypair,
    key_id,
    open_bundle,
    sign_bundle,
    verify_bundle,
)
from edge_runtime.models._fsutil import sha256_file
from edge_runtime.models._signing import load_private_key, load_public_key


@pytest.fixture
def keys(tmp_path: Path) -> KeyPairFiles:
    return generate_keypair(tmp_path / "keys", name="release")


@pytest.fixture
def other_keys(tmp_path: Path) -> KeyPairFiles:
    return generate_keypair(tmp_path / "keys", name="other")


def test_generate_keypair_files_modes_and_id(keys: KeyPairFiles) -> None:
    assert keys.private_key.name == "release.key"
    assert keys.public_key.name == "release.pub"
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert keys.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keys.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    from cryptography.hazmat.primitives import serialization

    raw = load_public_key(keys.public_key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert (
        keys.key_id == hashlib.sha256(raw).hexdigest()[:16] == key_id(load_private_key(keys.private_key).public_key())
    )
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(keys.private_key.parent, name="release")


def test_signed_bundle_verifies_and_signature_covers_the_manifest_bytes(tmp_path: Path, keys: KeyPairFiles) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=keys.private_key)
    sig = json.loads((b / "signature.json").read_text())
    assert sig["algorithm"] == "ed25519"
    assert sig["key_id"] == keys.key_id
    load_public_key(keys.public_key).verify(base64.b64decode(sig["signature"]), (b / "manifest.json").read_bytes())
    assert verify_bundle(b, trusted_keys=[keys.public_key]).version == 1


def test_sign_bundle_directory_and_archive(tmp_path: Path, keys: KeyPairFiles) -> None:
    d = make_bundle(tmp_path, version=1)
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(d, trusted_keys=[keys.public_key])
    assert sign_bundle(d, keys.private_key).key_id == keys.key_id
    verify_bundle(d, trusted_keys=[keys.public_key])

    a = make_bundle(tmp_path, version=2, archive=True)
    sign_bundle(a, load_private_key(keys.private_key))
    assert verify_bundle(a, trusted_keys=keys.public_key.read_bytes()).version == 2
    with open_bundle(a) as opened:
        assert opened.signature is not None
        assert opened.signature.key_id == keys.key_id


def test_tampered_manifest_is_refused(tmp_path: Path, keys: KeyPairFiles) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=keys.private_key)
    manifest = Manifest.load(b / "manifest.json")
    (b / "manifest.json").write_bytes(dataclasses.replace(manifest, version=99).to_json())
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_bundle(b, trusted_keys=[keys.public_key])


def test_swapped_model_with_rehashed_manifest_is_refused(tmp_path: Path, keys: KeyPairFiles) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=keys.private_key)
    write_mlp(b / "model.onnx", seed=666)  # an attacker's model
    sha, size = sha256_file(b / "model.onnx")
    manifest = Manifest.load(b / "manifest.json")
    (b / "manifest.json").write_bytes(dataclasses.replace(manifest, sha256=sha, size=size).to_json())
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_bundle(b, trusted_keys=[keys.public_key])
    # Without a signature requirement the (self-consistent) bundle passes: that is what signatures are for.
    assert verify_bundle(b).sha256 == sha


def test_swapped_model_alone_is_an_integrity_error_even_when_signed(tmp_path: Path, keys: KeyPairFiles) -> None:
    from edge_runtime import IntegrityError

    b = make_bundle(tmp_path, version=1, signing_key=keys.private_key)
    write_mlp(b / "model.onnx", seed=666)
    with pytest.raises(IntegrityError):
        verify_bundle(b, trusted_keys=[keys.public_key])


def test_untrusted_key_is_refused(tmp_path: Path, keys: KeyPairFiles, other_keys: KeyPairFiles) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=other_keys.private_key)
    with pytest.raises(SignatureError, match=f"untrusted key {other_keys.key_id}; trusted keys: {keys.key_id}"):
        verify_bundle(b, trusted_keys=[keys.public_key])
    assert verify_bundle(b, trusted_keys=[keys.public_key, other_keys.public_key]).version == 1


def test_forged_signature_under_a_trusted_key_id_is_refused(
    tmp_path: Path, keys: KeyPairFiles, other_keys: KeyPairFiles
) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=other_keys.private_key)
    sig = Signature.from_json((b / "signature.json").read_bytes())
    (b / "signature.json").write_bytes(dataclasses.replace(sig, key_id=keys.key_id).to_json())
    with pytest.raises(SignatureError, match="does not match"):
        verify_bundle(b, trusted_keys=[keys.public_key])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{", "not valid JSON"),
        (b'{"algorithm": "rsa", "key_id": "x", "signature": ""}', "algorithm 'rsa' is not supported"),
        (b'{"algorithm": "ed25519", "key_id": "x"}', "exactly algorithm, key_id and signature"),
        (b'{"algorithm": "ed25519", "key_id": "x", "signature": "***"}', "not valid base64"),
    ],
)
def test_malformed_signature_file(tmp_path: Path, keys: KeyPairFiles, content: bytes, message: str) -> None:
    b = make_bundle(tmp_path, version=1, signing_key=keys.private_key)
    (b / "signature.json").write_bytes(content)
    with pytest.raises(SignatureError, match=message) as info:
        verify_bundle(b, trusted_keys=[keys.public_key])
    assert str(b / "signature.json") in str(info.value)


def test_bad_key_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SignatureError, match=r"junk.pem: not a PEM public key"):
        TrustedKeys([junk])
    with pytest.raises(SignatureError, match=r"junk.pem: not an unencrypted PEM private key"):
        load_private_key(junk)
    with pytest.raises(SignatureError, match="cannot read public key"):
        TrustedKeys([tmp_path / "absent.pub"])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureError, match="expected an Ed25519 public key"):
        TrustedKeys([ec_pem])


def test_signing_refuses_a_broken_bundle(tmp_path: Path, keys: KeyPairFiles) -> None:
    from edge_runtime import IntegrityError

    b = make_bundle(tmp_path, version=1)
    (b / "model.onnx").write_bytes(b"corrupt")
    with pytest.raises(IntegrityError):
        sign_bundle(b, keys.private_key)
    assert not (b / "signature.json").exists()


def test_cli_keys_generate_and_models_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "fleet"]) == 0
    out = capsys.readouterr().out
    kid = out.strip().splitlines()[-1].removeprefix("key id: ")
    assert len(kid) == 16
    assert stat.S_IMODE((tmp_path / "k" / "fleet.key").stat().st_mode) == 0o600
    b = make_bundle(tmp_path, version=1)
    assert main(["models", "sign", str(b), "--key", str(tmp_path / "k" / "fleet.key")]) == 0
    assert f"with key {kid}" in capsys.readouterr().out
    pub = str(tmp_path / "k" / "fleet.pub")
    assert main(["models", "verify", str(b), "--trusted-key", pub, "--no-load"]) == 0
    assert f"signature: valid, key {kid}" in capsys.readouterr().out
    assert main(["keys", "generate", "--out", str(tmp_path / "k"), "--name", "fleet"]) == 1
    assert "already exists" in capsys.readouterr().err
    unsigned = make_bundle(tmp_path, version=2)
    assert main(["models", "verify", str(unsigned), "--trusted-key", pub]) == 1
    assert "not signed" in capsys.readouterr().err
