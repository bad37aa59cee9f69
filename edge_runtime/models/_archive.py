"""Bundle archives: a reproducible ``.tar.gz`` of a bundle directory, and extraction within budgets.

Extraction accepts only regular files at the top level or under one directory, reads the archive member by member
with the member limit checked as it goes, and checks the unpacked size against the archive's own manifest before
a byte is written.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

from edge_runtime._errors import BundleError

from ._fsutil import fsync_dir, write_file_atomic
from ._manifest import MANIFEST_FILE, MAX_MANIFEST_BYTES

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
