"""The on-device model store: verified, content-addressed bundles with an A/B active/previous slot per model.

Layout of the store directory::

    store.db              SQLite (WAL): installed versions, the active/previous slot per model, an event log
    blobs/<digest>/       one verified bundle, named by the sha256 of its manifest.json (which pins the model)
    tmp/                  installs in progress; emptied on open

Why SQLite and not a JSON state file: slot changes and version rows must commit together, several processes (the
app, the CLI, the sync agent) may open the same store, and SQLite gives atomic multi-row commits and cross-process
locking for free; the rest of the runtime already depends on it.

Crash safety comes from ordering. An install writes the bundle under ``tmp/``, fsyncs, verifies, renames it to
``blobs/<digest>`` and only then records it; a crash before the record leaves an unreferenced blob that the next
open deletes. An activation loads and health-checks the new version before committing the slot change, so a
crash leaves the slot on either the old or the new (already verified) version. Garbage collection deletes the
record first and the blob second. On open, temp dirs and orphan blobs are removed; the active version's files
are re-hashed before it is loaded.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_runtime._errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    HealthCheckError,
    IntegrityError,
    ModelError,
    ModelNotFoundError,
    VersionPolicyError,
)
from edge_runtime._sqlite import connect, migrate, transaction
from edge_runtime._time import now_us

from ._active import ActiveModel
from ._archive import extract_archive, is_archive
from ._backend import FORMAT_BACKENDS, InferenceBackend, open_backend
from ._bundle import Bundle, check_health
from ._fsutil import copy_file_synced, fsync_dir, remove_tree
from ._manifest import MANIFEST_FILE, SIGNATURE_FILE
from ._signing import TrustedKeys
from ._store_disk import collect_versions, recover_disk
from ._store_util import MIGRATIONS, ModelVersion, Policy, WriterLock, check_policy, pause_point

#: How many store events are kept in ``model_events``.
EVENTS_KEPT = 1000


class ModelStore:
    """Installs verified bundles and serves the active version of each model; see ``docs/models.md``.

    ``trusted_keys`` (public key paths, PEM bytes or key objects) turns on ``require_signature`` by default.
    ``keep`` is how many versions beyond the active and the previous one are kept per model. ``policy`` is
    ``"latest"``, a pinned version number, or a mapping of model name to either. ``backend`` is a backend name or a
    list in order of preference (names that do not run a bundle's format are skipped); ``threads`` goes to it.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        trusted_keys: Iterable[Any] | TrustedKeys | None = None,
        require_signature: bool | None = None,
        keep: int = 2,
        policy: Policy | Mapping[str, Policy] = "latest",
        backend: str | Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ConfigError("must be an integer >= 0", key="keep", expected="0, 1, 2, ...", got=keep)
        self._policy = check_policy(policy)
        self.root = Path(directory)
        self.keep = keep
        self.threads = threads
        self._backends: tuple[str, ...] = (backend,) if isinstance(backend, str) else tuple(backend or ())
        self._keys = TrustedKeys.coerce(trusted_keys)
        self.require_signature = self._keys is not None if require_signature is None else require_signature
        if self.require_signature and (self._keys is None or not len(self._keys)):
            raise ConfigError("require_signature needs at least one trusted key", key="trusted_keys")
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        for d in (self.root, self._blobs, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._db = connect(self.root / "store.db", check_same_thread=False)
            migrate(self._db, MIGRATIONS)
        except sqlite3.DatabaseError as exc:
            raise ModelError(f"{self.root / 'store.db'}: not a usable model store database ({exc})") from exc
        # Serialises installs, swaps and GC across threads and processes; predictions never take it.
        self._lock = WriterLock(self.root / "store.lock")
        self._active: dict[str, ActiveModel] = {}
        self._closed = False
        # Readers on other threads get a connection each: the writer's connection shows its uncommitted rows to
        # anyone using it, so status reads from an HTTP thread must not share it mid-install.
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        #: What the last open had to clean up or repair, in words (empty after a clean shutdown).
        self.recovery: list[str] = []
        with self._writing():
            self._recover()

    # --- reading ------------------------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """The connection for a read: the writer's own on the thread holding the writer lock (it must see its
        uncommitted rows), else this thread's own connection, which sees committed state only."""
        self._check_open()
        if self._lock.held_by_this_thread():
            return self._db
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.root / "store.db", check_same_thread=False)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def active(self, name: str) -> ActiveModel:
        """The loaded active version of ``name``: one dictionary read once it is loaded.

        The first call after opening verifies (sha256) and health-checks the active version; if that fails it
        falls back to the previous version. Raises :class:`ModelNotFoundError` when nothing is active.
        """
        model = self._active.get(name)
        if model is not None:
            return model
        with self._writing():
            model = self._active.get(name)
            if model is None:
                model = self._load_slot(name)
            return model

    def names(self) -> list[str]:
        """Every model name with at least one installed version."""
        return [r[0] for r in self._reader().execute("SELECT DISTINCT name FROM model_versions ORDER BY name")]

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        """Installed versions (of ``name``, or of every model), oldest first, with their slot."""
        sql = (
            "SELECT v.name, v.version, v.digest, v.format, v.size, v.created_at, v.installed_at_us, v.key_id,"
            " s.active, s.previous FROM model_versions v LEFT JOIN model_slots s ON s.name = v.name"
        )
        rows = (
            self._reader()
            .execute(
                sql + (" WHERE v.name = ? ORDER BY v.version" if name else " ORDER BY v.name, v.version"),
                (name,) if name else (),
            )
            .fetchall()
        )
        return [ModelVersion(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8] == r[1], r[9] == r[1]) for r in rows]

    def active_version(self, name: str) -> int | None:
        """The version recorded as active for ``name`` (without loading it), or None."""
        row = self._reader().execute("SELECT active FROM model_slots WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def previous_version(self, name: str) -> int | None:
        """The version :meth:`rollback` would return to, or None."""
        row = self._reader().execute("SELECT previous FROM model_slots WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def bundle_path(self, name: str, version: int) -> Path:
        """The directory holding an installed version's verified bundle."""
        return self._blobs / self._digest(name, version)

    def events(self, name: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent install/activate/rollback/failure events, newest first."""
        sql = "SELECT at_us, name, version, action, detail FROM model_events"
        rows = (
            self._reader()
            .execute(
                sql + (" WHERE name = ?" if name else "") + " ORDER BY id DESC LIMIT ?",
                (name, limit) if name else (limit,),
            )
            .fetchall()
        )
        return [dict(zip(("at_us", "name", "version", "action", "detail"), r, strict=True)) for r in rows]

    # --- installing ---------------------------------------------------------------------------------------------

    def install(self, source: str | Path, *, activate: bool = False, allow_downgrade: bool = False) -> ModelVersion:
        """Verify and install the bundle directory or archive at ``source``; optionally activate it.

        Installing a version that is already installed with the same content does nothing. A version lower than
        the active one is refused (:class:`VersionPolicyError`) unless ``allow_downgrade``. A bad bundle raises
        :class:`BundleError`, :class:`IntegrityError` or :class:`~edge_runtime.SignatureError` and changes nothing.
        """
        src = Path(source)
        with self._writing():
            tmp = Path(tempfile.mkdtemp(prefix="install-", dir=self._tmp))
            try:
                self._stage(src, tmp)
                bundle = Bundle.open(tmp)
                key = bundle.verify(trusted_keys=self._keys, require_signature=self.require_signature)
                m = bundle.manifest
                pause_point("install:verified")
                existing = self._db.execute(
                    "SELECT digest FROM model_versions WHERE name = ? AND version = ?", (m.name, m.version)
                ).fetchone()
                if existing is not None:
                    if existing[0] != bundle.digest:
                        raise VersionPolicyError(
                            f"{m.name} v{m.version} is already installed with different content; "
                            "publish the change as a new version"
                        )
                else:
                    current = self.active_version(m.name)
                    if current is not None and m.version < current and not allow_downgrade:
                        raise VersionPolicyError(
                            f"{m.name} v{m.version} is older than the active v{current}; "
                            "pass allow_downgrade=True (--allow-downgrade) to install it anyway"
                        )
                    self._commit_blob(bundle, tmp, key)
            except BaseException as exc:
                if isinstance(exc, ModelError):
                    self._event(None, None, "install-failed", f"{src}: {exc}")
                raise
            finally:
                remove_tree(tmp)
            if activate:
                self.activate(m.name, m.version, allow_downgrade=allow_downgrade)
            return next(v for v in self.versions(m.name) if v.version == m.version)

    def _stage(self, src: Path, tmp: Path) -> None:
        """Copy only the bundle's own files into ``tmp`` (fsynced): nothing unverified ever reaches a blob."""
        if is_archive(src):
            extract_archive(src, tmp)
            wanted = {MANIFEST_FILE, SIGNATURE_FILE, Bundle.open(tmp).manifest.model_file}
            for extra in tmp.iterdir():
                if extra.name not in wanted:
                    extra.unlink()
            return
        if not src.is_dir():
            raise BundleError("no bundle directory or .tar.gz archive here", path=src)
        source_manifest = Bundle.open(src).manifest
        for fname in (MANIFEST_FILE, SIGNATURE_FILE, source_manifest.model_file):
            if (src / fname).is_file():
                copy_file_synced(src / fname, tmp / fname)
        fsync_dir(tmp)

    def _commit_blob(self, bundle: Bundle, tmp: Path, key: str | None) -> None:
        m = bundle.manifest
        for child in tmp.iterdir():
            os.chmod(child, 0o444)  # a blob is immutable; read-only files make accidental edits fail loudly
        os.chmod(tmp, 0o755)
        dest = self._blobs / bundle.digest
        if dest.exists():  # an orphan from a crash before the record: not referenced, safe to replace
            remove_tree(dest)
        os.rename(tmp, dest)
        fsync_dir(self._blobs)
        pause_point("install:renamed")
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO model_versions (name, version, digest, format, size, created_at, installed_at_us, key_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (m.name, m.version, bundle.digest, m.format, m.size, m.created_at, now_us(), key),
            )
            self._log(m.name, m.version, "install", f"digest {bundle.digest[:16]}" + (f", key {key}" if key else ""))
        pause_point("install:recorded")

    # --- activating ---------------------------------------------------------------------------------------------

    def activate(self, name: str, version: int | None = None, *, allow_downgrade: bool = False) -> ActiveModel:
        """Load, warm up and health-check ``version`` (default: what the policy picks), then swap it in.

        Predictions running on other threads continue on the old version and new calls get the new one; nothing
        fails in between. A failed load or health check raises :class:`HealthCheckError` and leaves the previous
        model active. A lower version than the active one needs ``allow_downgrade``; a pinned policy refuses
        any other version.
        """
        with self._writing():
            target = self._policy_target(name) if version is None else version
            self._check_policy(name, target)
            current = self.active_version(name)
            if current == target:
                return self.active(name)
            if current is not None and target < current and not allow_downgrade:
                raise VersionPolicyError(
                    f"{name} v{target} is older than the active v{current}; "
                    "pass allow_downgrade=True (--allow-downgrade) or use rollback"
                )
            model = self._load_version(name, target)
            pause_point("activate:healthy")
            self._swap(name, model, previous=current, action="activate")
            return model

    def rollback(self, name: str) -> ActiveModel:
        """Swap back to the previous version (which then becomes active, and the current one previous)."""
        with self._writing():
            previous = self.previous_version(name)
            if previous is None:
                raise ModelNotFoundError(
                    f"{name} has no previous version to roll back to",
                    available=[str(v.version) for v in self.versions(name)],
                )
            self._check_policy(name, previous)
            current = self.active_version(name)
            model = self._load_version(name, previous)
            self._swap(name, model, previous=current, action="rollback")
            return model

    def _swap(self, name: str, model: ActiveModel, *, previous: int | None, action: str) -> None:
        with transaction(self._db):
            self._db.execute(
                "INSERT INTO model_slots (name, active, previous, updated_at_us) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET active = excluded.active, previous = excluded.previous,"
                " updated_at_us = excluded.updated_at_us",
                (name, model.version, previous, now_us()),
            )
            self._log(name, model.version, action, f"previous v{previous}" if previous is not None else None)
        pause_point(f"{action}:committed")
        # The swap itself: one reference assignment. A caller holding the old handle finishes on the old version;
        # its backend closes when the last reference to that handle goes away.
        self._active[name] = model
        self._collect(name)

    def _load_version(self, name: str, version: int) -> ActiveModel:
        """Re-verify the blob, open it on a backend and health-check it; raise without side effects on failure."""
        digest = self._digest(name, version)
        try:
            bundle = Bundle.open(self._blobs / digest)
            if bundle.digest != digest:
                raise IntegrityError("manifest.json changed on disk since install", path=bundle.path, field="digest")
            bundle.check_integrity()
            pause_point("activate:verified")
            backend = self._open(bundle)
            try:
                check_health(backend, bundle.manifest)
            except BaseException:
                backend.close()
                raise
        except ModelError as exc:
            self._event(name, version, "activate-failed", str(exc))
            if isinstance(exc, (HealthCheckError, BackendUnavailableError)):
                raise
            raise HealthCheckError(f"{name} v{version} was not activated: {exc}") from exc
        return ActiveModel(bundle.manifest, backend, path=bundle.path, digest=digest)

    def _open(self, bundle: Bundle) -> InferenceBackend:
        fmt = bundle.manifest.format
        preferred: list[str | None] = [b for b in self._backends if b in FORMAT_BACKENDS[fmt]] or [None]
        reasons = []
        for name in preferred:
            try:
                return open_backend(bundle.model_path, backend=name, fmt=fmt, threads=self.threads)
            except BackendUnavailableError as exc:
                reasons.append(str(exc))
            except ModelError as exc:
                raise HealthCheckError(
                    f"{bundle.manifest.name} v{bundle.manifest.version} does not load: {exc}"
                ) from exc
            except Exception as exc:  # an engine's own parse error
                raise HealthCheckError(
                    f"{bundle.manifest.name} v{bundle.manifest.version} does not load: {type(exc).__name__}: {exc}"
                ) from exc
        raise BackendUnavailableError("/".join(str(p) for p in preferred), "; ".join(reasons))

    def _load_slot(self, name: str) -> ActiveModel:
        """Load the recorded active version, falling back to the previous one when it no longer verifies."""
        row = self._db.execute("SELECT active, previous FROM model_slots WHERE name = ?", (name,)).fetchone()
        if row is None or row[0] is None:
            raise ModelNotFoundError(f"no active version of model {name!r}", available=self._active_names())
        active, previous = row
        try:
            model = self._load_version(name, active)
        except ModelError as first:
            if previous is None:
                raise
            try:
                model = self._load_version(name, previous)
            except ModelError:
                raise first from None
            self.recovery.append(f"{name}: v{active} failed ({first}); fell back to v{previous}")
            with transaction(self._db):
                self._db.execute(
                    "UPDATE model_slots SET active = ?, previous = NULL, updated_at_us = ? WHERE name = ?",
                    (previous, now_us(), name),
                )
                self._log(name, previous, "fallback", f"v{active} failed: {first}")
        self._active[name] = model
        return model

    # --- policy, GC, recovery ---------------------------------------------------------------------------------

    def _policy_for(self, name: str) -> Policy:
        if isinstance(self._policy, Mapping):
            return self._policy.get(name, "latest")
        return self._policy

    def _policy_target(self, name: str) -> int:
        policy = self._policy_for(name)
        if isinstance(policy, int):
            return policy
        row = self._db.execute("SELECT MAX(version) FROM model_versions WHERE name = ?", (name,)).fetchone()
        if row[0] is None:
            raise ModelNotFoundError(f"model {name!r} is not installed", available=self.names())
        return int(row[0])

    def _check_policy(self, name: str, version: int) -> None:
        policy = self._policy_for(name)
        if isinstance(policy, int) and version != policy:
            raise VersionPolicyError(f"{name} is pinned to v{policy}; refusing v{version}")

    def _collect(self, name: str) -> None:
        collect_versions(self._db, self._blobs, self._tmp, name, self.keep, self._log)

    def _recover(self) -> None:
        self.recovery += recover_disk(self._db, self._blobs, self._tmp)
        if self.recovery:
            self._event(None, None, "recover", "; ".join(self.recovery))

    def verify_active(self) -> dict[str, int]:
        """Load (verify + health-check) the active version of every model now; return name → version."""
        return {name: self.active(name).version for name in self._active_names()}

    # --- helpers ------------------------------------------------------------------------------------------------

    def _active_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM model_slots WHERE active IS NOT NULL ORDER BY name")]

    def _digest(self, name: str, version: int) -> str:
        row = self._db.execute(
            "SELECT digest FROM model_versions WHERE name = ? AND version = ?", (name, version)
        ).fetchone()
        if row is None:
            available = [f"{v.name} v{v.version}" for v in self.versions(name)] or self.names()
            raise ModelNotFoundError(f"{name} v{version} is not installed", available=available)
        return str(row[0])

    def _log(self, name: str | None, version: int | None, action: str, detail: str | None) -> None:
        self._db.execute(
            "INSERT INTO model_events (at_us, name, version, action, detail) VALUES (?, ?, ?, ?, ?)",
            (now_us(), name or "", version, action, detail),
        )
        # The log is for diagnosis, not history: a device retrying a bad bundle must not grow it without bound.
        self._db.execute("DELETE FROM model_events WHERE id <= (SELECT MAX(id) FROM model_events) - ?", (EVENTS_KEPT,))

    def _event(self, name: str | None, version: int | None, action: str, detail: str | None) -> None:
        try:
            with transaction(self._db):
                self._log(name, version, action, detail)
        except sqlite3.Error:  # the event log must never turn a clear error into a database one
            pass

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the thread lock and the cross-process file lock (re-entrant within this store)."""
        with self._lock.hold():
            self._check_open()
            yield

    def _check_open(self) -> None:
        if self._closed:
            raise ModelError(f"model store {self.root} is closed")

    def close(self) -> None:
        """Close every loaded backend and the database. Handles still held by callers stop working."""
        if self._closed:
            return
        with self._lock.hold():
            if self._closed:  # another thread closed it while this one waited
                return
            self._closed = True
            for model in self._active.values():
                model.close()
            self._active.clear()
            self._db.close()
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
        self._lock.close()

    def __enter__(self) -> ModelStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"
