"""Model releases: preparing a signed copy of a bundle, its manifest message, targets and canary halting.

A release is one bundle (one variant of one model version) offered on a *channel*: ``<name>.<variant>`` when the
manifest's ``metadata.variant`` is set, else ``<name>``. Each variant travels on its own retained manifest topic
and devices choose by their variant preference. The bundle is copied into the release directory (and signed
there when it is not signed yet, or when an expiry is added), so chunks are served from files the publisher owns.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cloud_sync._errors import ProtocolError, ReleaseError
from cloud_sync.protocol import ModelManifestMessage, validate_name
from edge_runtime._sqlite import transaction
from edge_runtime._time import now_us

SCOPES = ("all", "devices", "canary")
#: Install outcomes that count against a release.
FAILURE_OUTCOMES = ("failed", "rolled_back", "refused")


@dataclass(frozen=True)
class Release:
    """One row of the releases table."""

    id: int
    channel: str
    model: str
    variant: str | None
    version: int
    sha256: str
    size: int
    chunk_size: int
    bundle_dir: Path
    model_file: str
    scope: str
    percent: float | None
    threshold: float
    state: str
    halt_reason: str | None
    created_us: int

    @property
    def model_path(self) -> Path:
        """The model file chunks are served from."""
        return self.bundle_dir / self.model_file

    @property
    def chunk_count(self) -> int:
        """Number of chunks."""
        return math.ceil(self.size / self.chunk_size) if self.size else 0

    def manifest_message(self) -> ModelManifestMessage:
        """The ``model.manifest`` body for this release (chunk digests computed from the stored model file)."""
        digests = []
        with self.model_path.open("rb") as fh:
            while chunk := fh.read(self.chunk_size):
                digests.append(hashlib.sha256(chunk).digest())
        return ModelManifestMessage(
            model=self.channel,
            version=self.version,
            manifest=(self.bundle_dir / "manifest.json").read_bytes(),
            signature=(self.bundle_dir / "signature.json").read_bytes(),
            size=self.size,
            sha256=bytes.fromhex(self.sha256),
            chunk_size=self.chunk_size,
            chunk_sha256=tuple(digests),
        )

    def read_chunk(self, index: int) -> bytes | None:
        """Chunk ``index`` of the model file, or None when out of range."""
        if not 0 <= index < self.chunk_count:
            return None
        with self.model_path.open("rb") as fh:
            fh.seek(index * self.chunk_size)
            return fh.read(self.chunk_size)


_COLUMNS = (
    "id, channel, model, variant, version, sha256, size, chunk_size, bundle_dir, model_file, scope, percent, "
    "threshold, state, halt_reason, created_us"
)


def _release(row: Sequence[Any]) -> Release:
    values = list(row)
    values[8] = Path(values[8])
    return Release(*values)


def channel_of(name: str, metadata: Any) -> tuple[str, str | None]:
    """(channel, variant) of a manifest: ``name.variant`` when ``metadata.variant`` is set."""
    variant = metadata.get("variant") if isinstance(metadata, dict) else None
    if variant is None:
        return name, None
    channel = f"{name}.{variant}"
    try:
        validate_name(channel, what="model channel")
    except ProtocolError as exc:
        raise ReleaseError(f"metadata.variant {variant!r} cannot name a release channel: {exc}") from None
    return channel, str(variant)


def canary_rank(model: str, version: int, device: str) -> float:
    """A device's stable position in [0, 1) for one model version: the lowest ranks are the canary.

    Keyed by the model name, not the channel, so a canary of several variants picks the same devices for all of
    them (a device is offered every variant or none, and chooses by its own preference).
    """
    digest = hashlib.sha256(f"{model}\0{version}\0{device}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def prepare_bundle(
    source: str | Path,
    releases_dir: Path,
    *,
    signing_key: Any = None,
    expires_at: _dt.datetime | None = None,
) -> Path:
    """Copy the bundle at ``source`` into ``releases_dir``, add the expiry and sign as needed; return the copy.

    Signs when the bundle is unsigned or its manifest changed (an expiry was added); a signed bundle without
    changes keeps its signature. Raises ReleaseError when a signature is needed and there is no key.
    """
    from edge_runtime._errors import EdgeRuntimeError
    from edge_runtime.models import Manifest, open_bundle, sign_bundle

    releases_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open_bundle(source) as bundle:
            bundle.verify(require_signature=False)
            manifest = bundle.manifest
            channel, _ = channel_of(manifest.name, dict(manifest.metadata or {}))
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=releases_dir))
            try:
                for name in ("manifest.json", manifest.model_file, "signature.json"):
                    if (bundle.path / name).exists():
                        shutil.copyfile(bundle.path / name, tmp / name)
                changed = False
                if expires_at is not None:
                    meta = dict(manifest.metadata or {})
                    meta["expires_at"] = expires_at.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                    (tmp / "manifest.json").write_bytes(replace(manifest, metadata=meta).to_json())
                    changed = True
                    Manifest.load(tmp / "manifest.json")
                if changed or bundle.signature is None:
                    if signing_key is None:
                        why = "changed (expiry added)" if changed else "not signed"
                        raise ReleaseError(
                            f"the bundle {source} is {why} and no signing key was given; pass --signing-key "
                            "(an Ed25519 PEM file from edge-runtime keys generate) or set [release] signing_key"
                        )
                    sign_bundle(tmp, signing_key)
                digest = hashlib.sha256((tmp / "manifest.json").read_bytes()).hexdigest()[:16]
                final = releases_dir / channel / f"v{manifest.version}-{digest}"
                if final.exists():
                    shutil.rmtree(tmp)
                else:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    tmp.rename(final)
                return final
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except EdgeRuntimeError as exc:
        raise ReleaseError(f"cannot release {source}: {exc}") from exc


class ReleaseBook:
    """The releases and their targets in the publisher database (used by the thread owning the connection)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.clock = clock

    def get(self, channel: str, version: int) -> Release | None:
        """The release of ``channel`` at ``version``, or None."""
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM releases WHERE channel = ? AND version = ?", (channel, version)
        ).fetchone()
        return _release(row) if row else None

    def by_id(self, release_id: int) -> Release:
        """The release with ``release_id``."""
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM releases WHERE id = ?", (release_id,)).fetchone()
        if row is None:
            raise ReleaseError(f"no release with id {release_id}")
        return _release(row)

    def all(self) -> list[Release]:
        """Every release, newest first."""
        return [_release(r) for r in self.conn.execute(f"SELECT {_COLUMNS} FROM releases ORDER BY id DESC")]

    def active(self) -> list[Release]:
        """Releases currently offered (state ``active``)."""
        return [_release(r) for r in self.conn.execute(f"SELECT {_COLUMNS} FROM releases WHERE state = 'active'")]

    def targets(self, release_id: int) -> dict[str, tuple[int | None, str | None]]:
        """``{device: (started_us, outcome)}`` of a release's targets."""
        return {
            r[0]: (r[1], r[2])
            for r in self.conn.execute(
                "SELECT device, started_us, outcome FROM release_targets WHERE release_id = ?", (release_id,)
            )
        }

    def create(
        self,
        bundle_dir: Path,
        *,
        scope: str,
        devices: Iterable[str],
        percent: float | None,
        threshold: float,
        chunk_size: int,
        fleet: Iterable[str],
    ) -> tuple[Release, list[str]]:
        """Record a release of the prepared bundle; return it and the devices it is offered to now.

        ``fleet`` is every device known (the ledger's, plus any named): ``canary`` picks ``percent`` % of it by
        a stable per-version rank (at least one device), ``devices`` takes ``devices``, ``all`` offers it to
        every device (the fleet is recorded as targets, so failures can be counted). Releasing the same bundle
        again with the same scope is a no-op; with another scope it changes the release (promote a canary to
        ``all``, widen its percentage, add devices, offer a halted release again); targets are only ever added.
        An older version or the same version with another model is refused.
        """
        from edge_runtime.models import Bundle

        if scope not in SCOPES:
            raise ReleaseError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        bundle = Bundle.open(bundle_dir)
        m = bundle.manifest
        channel, variant = channel_of(m.name, dict(m.metadata or {}))
        device_list = sorted(set(devices))
        fleet_list = sorted(set(fleet) | set(device_list))
        if scope == "devices" and not device_list:
            raise ReleaseError("a release to a device list needs at least one device")
        if scope == "canary":
            if percent is None or not 0 < percent <= 100:
                raise ReleaseError(f"a canary needs a percentage in (0, 100], got {percent!r}")
            if not fleet_list:
                raise ReleaseError("a canary needs known devices: none has connected yet and none was named")
            ranked = sorted(fleet_list, key=lambda d: canary_rank(m.name, m.version, d))
            device_list = ranked[: max(1, math.ceil(len(ranked) * percent / 100))]
        elif scope == "all":
            device_list = fleet_list
        now = now_us(self.clock)
        with transaction(self.conn):
            existing = self.get(channel, m.version)
            if existing is not None:
                if existing.sha256 != m.sha256:
                    raise ReleaseError(
                        f"{channel} version {m.version} was already released with a different model "
                        f"(sha256 {existing.sha256[:12]}…); bump the version"
                    )
                unchanged = (existing.scope, existing.percent) == (scope, percent) and scope != "devices"
                if existing.state == "active" and unchanged:
                    return existing, list(self.targets(existing.id))
            newest = self.conn.execute(
                "SELECT max(version) FROM releases WHERE channel = ? AND state != 'halted'", (channel,)
            ).fetchone()[0]
            if newest is not None and newest > m.version:
                raise ReleaseError(
                    f"{channel} version {newest} is already released; version {m.version} would be a downgrade"
                )
            if existing is not None:  # promoted (canary → all), widened, more devices, or offered again
                self.conn.execute(
                    "UPDATE releases SET state = 'active', halt_reason = NULL, halted_us = NULL, scope = ?, "
                    "percent = ?, threshold = ?, bundle_dir = ? WHERE id = ?",
                    (scope, percent, threshold, str(bundle_dir), existing.id),
                )
                release_id = existing.id
            else:
                self.conn.execute(
                    "UPDATE releases SET state = 'superseded' WHERE channel = ? AND state = 'active'", (channel,)
                )
                cur = self.conn.execute(
                    "INSERT INTO releases (channel, model, variant, version, sha256, size, chunk_size, bundle_dir, "
                    "model_file, scope, percent, threshold, state, created_us) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,'active',?)",
                    (
                        channel,
                        m.name,
                        variant,
                        m.version,
                        m.sha256,
                        m.size,
                        chunk_size,
                        str(bundle_dir),
                        m.model_file,
                        scope,
                        percent,
                        threshold,
                        now,
                    ),
                )
                release_id = int(cur.lastrowid or 0)
            self.conn.executemany(
                "INSERT INTO release_targets (release_id, device, offered_us) VALUES (?,?,?) "
                "ON CONFLICT (release_id, device) DO UPDATE SET offered_us = excluded.offered_us",
                [(release_id, d, now) for d in device_list],
            )
        return self.by_id(release_id), device_list

    def offer_new_device(self, device: str) -> list[Release]:
        """Releases a newly seen ``device`` should be offered (recorded as targets): broadcast releases and
        canaries whose rank admits it. Device-list releases never grow."""
        now = now_us(self.clock)
        offered = []
        with transaction(self.conn):
            for rel in self.active():
                if self.conn.execute(
                    "SELECT 1 FROM release_targets WHERE release_id = ? AND device = ?", (rel.id, device)
                ).fetchone():
                    continue
                if rel.scope == "all" or (
                    rel.scope == "canary"
                    and rel.percent is not None
                    and canary_rank(rel.model, rel.version, device) < rel.percent / 100
                ):
                    self.conn.execute(
                        "INSERT INTO release_targets (release_id, device, offered_us) VALUES (?,?,?)",
                        (rel.id, device, now),
                    )
                    offered.append(rel)
        return offered

    def may_serve(self, release: Release, device: str) -> bool:
        """Whether chunks of ``release`` may go to ``device``: offered to it and not halted (unless it had
        already started downloading before the halt)."""
        row = self.conn.execute(
            "SELECT started_us FROM release_targets WHERE release_id = ? AND device = ?", (release.id, device)
        ).fetchone()
        if release.state == "halted":
            return row is not None and row[0] is not None
        return row is not None or release.scope == "all"

    def started(self, release: Release, device: str) -> bool:
        """Whether ``device`` already asked for chunks of ``release``."""
        row = self.conn.execute(
            "SELECT started_us FROM release_targets WHERE release_id = ? AND device = ?", (release.id, device)
        ).fetchone()
        return row is not None and row[0] is not None

    def mark_started(self, release: Release, device: str) -> None:
        """Record that ``device`` began downloading ``release`` (first chunk request)."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO release_targets (release_id, device, offered_us, started_us) VALUES (?,?,?,?) "
                "ON CONFLICT (release_id, device) DO UPDATE SET started_us = coalesce(started_us, excluded.started_us)",
                (release.id, device, now, now),
            )

    def record_outcome(self, release: Release, device: str, outcome: str, reason: str) -> str | None:
        """Store an install report; halt the release when failures exceed its threshold. Returns the halt
        reason when this report halted it."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO release_targets (release_id, device, offered_us, outcome, reason, reported_us) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (release_id, device) DO UPDATE SET outcome = excluded.outcome, "
                "reason = excluded.reason, reported_us = excluded.reported_us",
                (release.id, device, now, outcome, reason, now),
            )
            if release.state != "active" or outcome not in FAILURE_OUTCOMES:
                return None
            total, failed = self.conn.execute(
                "SELECT count(*), coalesce(sum(outcome IN ('failed', 'rolled_back', 'refused')), 0) "
                "FROM release_targets WHERE release_id = ?",
                (release.id,),
            ).fetchone()
            if not total or failed / total <= release.threshold:
                return None
            why = (
                f"halted: {failed} of {total} devices reported failure ({failed / total:.0%} > threshold "
                f"{release.threshold:.0%}); last: {device} {outcome}: {reason or 'no reason given'}"
            )
            self.conn.execute(
                "UPDATE releases SET state = 'halted', halt_reason = ?, halted_us = ? WHERE id = ?",
                (why, now, release.id),
            )
            return why

    def halt(self, release: Release, reason: str) -> None:
        """Stop offering ``release`` (by hand)."""
        with transaction(self.conn):
            self.conn.execute(
                "UPDATE releases SET state = 'halted', halt_reason = ?, halted_us = ? WHERE id = ?",
                (reason, now_us(self.clock), release.id),
            )

    def restore_previous(self, release: Release) -> Release | None:
        """After ``release`` (fleet-wide) halted: make the newest older fleet-wide release of its channel active
        again and return it, so the broadcast topic offers that one instead of nothing (None when none)."""
        with transaction(self.conn):
            row = self.conn.execute(
                "SELECT id FROM releases WHERE channel = ? AND scope = 'all' AND state = 'superseded' "
                "AND version < ? ORDER BY version DESC LIMIT 1",
                (release.channel, release.version),
            ).fetchone()
            if row is None:
                return None
            self.conn.execute("UPDATE releases SET state = 'active' WHERE id = ?", (row[0],))
        return self.by_id(row[0])

    def unstarted_targets(self, release_id: int) -> list[str]:
        """Targets that never asked for a chunk and never reported: their offer is withdrawn on a halt."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT device FROM release_targets WHERE release_id = ? AND started_us IS NULL AND outcome IS NULL",
                (release_id,),
            )
        ]
