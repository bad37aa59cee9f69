"""Bundle files and archives are read within budgets: no bomb, no endless member list, no device file, no FIFO.

Each case was a real failure: a 523 KB .tar.gz unpacked 512 MiB before the size check refused it; a 200,000-member
archive cost 9.5 s and 87 MB before the 16-member limit applied; a 200 MB manifest.json was accepted; a manifest
that is a link to /dev/zero ate memory; a FIFO signature.json hung `models verify`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from edge_runtime import BundleError
from edge_runtime.models import Manifest, verify_bundle
from edge_runtime.models._archive import extract_archive, write_archive
from edge_runtime.models._manifest import MAX_MANIFEST_BYTES

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "models" / "ctr-onnx-int8"


def _bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(SRC, dst)
    return dst


def _tar(path: Path, entries: list[tuple[str, int | bytes]]) -> Path:
    """A .tar.gz of (name, data) entries; an int is that many zero bytes, streamed (a bomb compresses to little)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if isinstance(data, int):
                info.size = data
                tar.addfile(info, _Zeros(data))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def test_a_compression_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    manifest = (SRC / "manifest.json").read_bytes()
    bomb = _tar(tmp_path / "bomb.tar.gz", [("b/manifest.json", manifest), ("b/model.onnx", 64 * 1024 * 1024)])
    assert bomb.stat().st_size < 1024 * 1024
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BundleError, match="declares"):
        extract_archive(bomb, dest)
    assert list(dest.iterdir()) == [], "nothing was unpacked"


def test_a_bomb_without_a_manifest_stops_at_the_hard_cap(tmp_path: Path) -> None:
    bomb = _tar(tmp_path / "bomb.tar.gz", [("b/data.bin", 64 * 1024 * 1024)])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(BundleError, match=r"budget|manifest"):
        extract_archive(bomb, dest, max_bytes=16 * 1024 * 1024)
    assert list(dest.iterdir()) == []


def test_the_member_limit_applies_while_iterating(tmp_path: Path) -> None:
    many = _tar(tmp_path / "many.tar.gz", [(f"b/f{i}", b"x") for i in range(2000)])
    dest = tmp_path / "out"
    dest.mkdir()
    read: list[int] = []
    real_next = tarfile.TarFile.next

    def counting_next(self: tarfile.TarFile) -> tarfile.TarInfo | None:
        read.append(1)
        return real_next(self)

    tarfile.TarFile.next = counting_next  # type: ignore[method-assign]
    try:
        with pytest.raises(BundleError, match="entries"):
            extract_archive(many, dest)
    finally:
        tarfile.TarFile.next = real_next  # type: ignore[method-assign]
    assert len(read) <= 20, "the archive was not read to its end before the limit applied"


def test_our_own_archives_still_extract(tmp_path: Path) -> None:
    archive = write_archive(_bundle(tmp_path), tmp_path / "ok.tar.gz")
    dest = tmp_path / "out"
    dest.mkdir()
    extract_archive(archive, dest)
    assert (dest / "manifest.json").exists() and (dest / "model.onnx").exists()


def test_an_oversized_manifest_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    raw = json.loads((bundle / "manifest.json").read_text())
    raw["metadata"] = {"pad": "x" * (MAX_MANIFEST_BYTES + 10)}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="larger than"):
        Manifest.load(bundle / "manifest.json")


def test_a_manifest_that_is_a_device_file_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "manifest.json").unlink()
    (bundle / "manifest.json").symlink_to("/dev/zero")
    with pytest.raises(BundleError, match="regular file"):
        Manifest.load(bundle / "manifest.json")


def test_a_fifo_signature_does_not_hang_verify(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "signature.json").unlink(missing_ok=True)
    os.mkfifo(bundle / "signature.json")
    result: list[BaseException | None] = []

    def verify() -> None:
        try:
            verify_bundle(bundle)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=verify, daemon=True)
    thread.start()
    thread.join(10)
    assert result, "verify hung on the FIFO"
    assert isinstance(result[0], BundleError) and "regular file" in str(result[0])


def test_deeply_nested_manifests_and_signatures_are_typed_errors(tmp_path: Path) -> None:
    from edge_runtime import SignatureError
    from edge_runtime.models import Signature

    deep = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(BundleError, match="deeply"):
        Manifest.from_json(deep)
    with pytest.raises(SignatureError, match="deeply"):
        Signature.from_json(deep)
