"""Durable file operations: write to a temporary name, fsync, rename, fsync the directory.

A rename is atomic on POSIX, but only an fsync of the file before it and of the directory after it makes the
result survive a power loss; after a crash a reader finds either the old file or the complete new one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from pathlib import Path

from edge_runtime._errors import BundleError

_CHUNK = 1 << 20


def read_capped(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, refused when larger than ``limit`` or not a regular file.

    A device file (``/dev/zero``) would be read forever and a FIFO would block the reader, so the type is checked
    before opening, and the open never blocks. Raises ``ValueError`` with the reason (callers name the file) and
    ``OSError`` for I/O failures.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("is not a regular file")
    if st.st_size > limit:
        raise ValueError(f"is larger than the {limit:,}-byte limit ({st.st_size:,} bytes)")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew after the stat
        raise ValueError(f"is larger than the {limit:,}-byte limit")
    return data


def read_bundle_file(path: str | Path, limit: int, what: str) -> bytes:
    """A bundle's small file (manifest, signature), read within ``limit``; ``BundleError`` names the file."""
    try:
        return read_capped(path, limit)
    except FileNotFoundError:
        raise BundleError(f"{what} file is missing", path=path) from None
    except ValueError as exc:
        raise BundleError(f"the {what} file {exc}", path=path) from None
    except OSError as exc:
        raise BundleError(f"cannot read the {what} ({exc})", path=path) from exc


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so the names created or renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """fsync one file's contents."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: a crash leaves either the old or the new file, never a mix."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def copy_file_synced(src: str | Path, dst: str | Path) -> tuple[str, int]:
    """Copy ``src`` to a new file ``dst``, fsync it, and return the sha256 and size of the bytes written."""
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


def sha256_file(path: str | Path) -> tuple[str, int]:
    """The sha256 (hex) and size in bytes of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def remove_tree(path: str | Path) -> None:
    """Delete a directory tree, ignoring a path that is already gone."""
    shutil.rmtree(path, ignore_errors=True)
