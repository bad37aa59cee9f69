"""The model store's housekeeping on disk: garbage collection of old versions and recovery after a crash.

Both keep one rule: the database record and the blob directory change in an order that never leaves a recorded
version without its files (records go first when deleting, blobs are renamed away before they are removed).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from edge_runtime._sqlite import transaction

from ._fsutil import fsync_dir, remove_tree
from ._manifest import MANIFEST_FILE

#: ``log(name, version, action, detail)`` writes an event inside the caller's transaction.
EventLog = Callable[[str | None, int | None, str, str | None], None]


def collect_versions(db: sqlite3.Connection, blobs: Path, tmp: Path, name: str, keep: int, log: EventLog) -> None:
    """Delete versions of ``name`` beyond active + previous + ``keep`` (the highest versions are kept)."""
    slot = db.execute("SELECT active, previous FROM model_slots WHERE name = ?", (name,)).fetchone()
    protected = {v for v in (slot or ()) if v is not None}
    others = [
        (v, d)
        for v, d in db.execute(
            "SELECT version, digest FROM model_versions WHERE name = ? ORDER BY version DESC", (name,)
        )
        if v not in protected
    ]
    doomed = others[keep:]
    if not doomed:
        return
    with transaction(db):
        for version, _ in doomed:
            db.execute("DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version))
            log(name, version, "gc", None)
    for _, digest in doomed:
        remove_blob(blobs, tmp, digest)


def remove_blob(blobs: Path, tmp: Path, digest: str) -> None:
    """Remove one blob directory; renamed first so a half-deleted blob never sits under a digest name."""
    blob = blobs / digest
    if not blob.exists():
        return
    trash = tmp / f"gc-{digest[:16]}-{os.getpid()}-{time.monotonic_ns()}"
    os.rename(blob, trash)
    remove_tree(trash)


def recover_disk(db: sqlite3.Connection, blobs: Path, tmp: Path) -> list[str]:
    """Clean up after a crash: leftover temp files, blobs no record names, records whose files are gone.
    Returns what was done, in words."""
    notes = []
    for leftover in tmp.iterdir():
        notes.append(f"removed leftover {leftover.name}")
        remove_tree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    known = {r[0] for r in db.execute("SELECT digest FROM model_versions")}
    for blob in blobs.iterdir():
        if blob.name not in known:
            notes.append(f"removed unrecorded blob {blob.name[:16]}")
            remove_blob(blobs, tmp, blob.name)
    missing = [
        (n, v)
        for n, v, d in db.execute("SELECT name, version, digest FROM model_versions")
        if not (blobs / d / MANIFEST_FILE).is_file()
    ]
    for n, v in missing:
        notes.append(f"{n} v{v}: bundle files are gone; forgotten")
        with transaction(db):
            db.execute("DELETE FROM model_versions WHERE name = ? AND version = ?", (n, v))
            db.execute("UPDATE model_slots SET active = NULL WHERE name = ? AND active = ?", (n, v))
            db.execute("UPDATE model_slots SET previous = NULL WHERE name = ? AND previous = ?", (n, v))
    fsync_dir(blobs)
    return notes
