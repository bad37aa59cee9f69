"""``CloudPublisher``: publish feature snapshots and deltas, release models, serve devices, keep the ledger."""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cloud_sync._errors import EncodeError, MessageTooLargeError, ProtocolError, PublisherError, ReleaseError
from cloud_sync.protocol import Codec, FeatureBatch, Topics, validate_name
from cloud_sync.protocol._columns import build_columns

from ._client import CloudConnection
from ._config import CloudConfig
from ._db import BROADCAST, open_db
from ._ledger import DeviceState, Ledger
from ._log import StreamInfo, TargetResult
from ._releases import Release, ReleaseBook, prepare_bundle
from ._routing import Route, gather, route_rows
from ._sources import read_columns
from ._worker import Worker

DEFAULT_TIMEOUT = 30.0
T = TypeVar("T")


@dataclass(frozen=True)
class PublishResult:
    """What :meth:`CloudPublisher.publish_features` sent: one entry per target (device id, ``"*"`` = fleet)."""

    view: str
    kind: str
    targets: tuple[TargetResult, ...]
    unrouted: int = 0

    @property
    def messages(self) -> int:
        """Messages sent in total."""
        return sum(t.messages for t in self.targets)

    @property
    def rows(self) -> int:
        """Rows sent in total (over all targets)."""
        return sum(t.rows for t in self.targets)


@dataclass(frozen=True)
class ReleaseResult:
    """A release made by :meth:`CloudPublisher.release`: the record and the devices it was offered to now."""

    release: Release
    offered: tuple[str, ...] = field(default=())


class CloudPublisher:
    """The cloud side of the sync protocol over one MQTT connection and one SQLite file.

    ``serve=True`` makes it a long-running worker (persistent session under ``config.client_id``, subscribed to
    every device's ``up/``) that answers catch-ups and chunk requests and keeps the ledger; ``serve=False``
    (one-shot commands) only publishes. Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with CloudPublisher(CloudConfig.from_credentials("creds.json"), serve=True) as cloud:
            cloud.publish_features("user_stats", "stats.parquet", join_keys=["user_id"], route="device_id")
    """

    def __init__(
        self,
        config: CloudConfig,
        *,
        serve: bool = True,
        clock: Any = time.time,
        connect_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.serve = serve
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.topics = Topics(config.topic_prefix)
        self.codec = Codec(max_message_bytes=config.max_message_bytes)
        self._jobs: queue.Queue[Any] = queue.Queue()
        filters = self.topics.cloud_subscriptions() if serve else []
        if config.shared_group:
            filters = [f"$share/{config.shared_group}/{f}" for f in filters]
        self.connection = CloudConnection(config, subscribe=filters, persistent=serve, inbox=self._jobs)
        self.worker = Worker(
            str(config.db_path), config.log_store, self.connection, self._jobs, self.codec, self.topics, clock
        )
        self._started = False

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self, *, wait: bool = True) -> CloudPublisher:
        """Open the database, start the worker and connect; with ``wait`` block until connected."""
        if self._started:
            return self
        self.worker.start()
        self.connection.start()
        self._started = True
        if wait:
            try:
                self.connection.wait_connected(self.connect_timeout)
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Finish queued work, wait briefly for outstanding PUBACKs, disconnect."""
        if not self._started:
            return
        self.worker.stop()
        self.connection.stop()
        self._started = False

    def __enter__(self) -> CloudPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Block until everything received or submitted so far has been handled."""
        self._call(lambda: None, timeout)

    def _call(self, fn: Callable[[], T], timeout: float = DEFAULT_TIMEOUT) -> T:
        """Run ``fn`` on the worker thread (the owner of the database connection) and return its result."""
        future = self.worker.submit(fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise PublisherError(
                f"the publisher's worker did not finish in {timeout:g} s (a large publish, or a slow disk?)"
            ) from None

    def stats(self) -> dict[str, int]:
        """Counters: messages received, rejected, catch-ups, chunks served, releases halted, ..."""
        return dict(self.worker.stats)

    # --- features -------------------------------------------------------------------------------------------

    def publish_features(
        self,
        view: str,
        data: Any,
        *,
        join_keys: Iterable[str],
        kind: str = "delta",
        route: Route | None = None,
        broadcast: bool = False,
        tombstones: Any = None,
        dtypes: Mapping[str, str] | None = None,
        timestamp_column: str | None = "event_timestamp",
        skip_unrouted: bool = False,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> PublishResult:
        """Publish a snapshot (``kind="snapshot"``) or delta of feature view ``view``.

        ``data`` is a Parquet/CSV/JSON-lines path, a DataFrame, a list of row dicts or a dict of columns.
        ``route`` sends each row to one device (a column naming the device, ``{entity: device}``, or a callable
        taking ``{join_key: value}``); ``broadcast=True`` sends everything to the whole fleet instead.
        ``tombstones`` (same forms; join keys and optionally the event time) are deletions. Rows a mapping has
        no device for raise PublisherError unless ``skip_unrouted``. Everything is logged in one transaction
        before it is sent; with ``wait`` this returns once the broker acknowledged every message.
        """
        try:
            validate_name(view, what="feature view name")
        except ProtocolError as exc:
            raise PublisherError(str(exc)) from None
        if kind not in ("snapshot", "delta"):
            raise PublisherError(f"kind must be 'snapshot' or 'delta', got {kind!r}")
        if broadcast == (route is not None):
            raise PublisherError("give either route= (per-device rows) or broadcast=True (the whole fleet)")
        keys = tuple(join_keys)
        if not keys:
            raise PublisherError("join_keys must name at least one column (the entity key of the view)")
        if kind == "snapshot" and tombstones is not None:
            raise PublisherError("a snapshot replaces everything; it takes no tombstones")
        ts_cols = (timestamp_column,) if timestamp_column else ()
        # The event-time column is a timestamp even when given as epoch seconds (which would infer as numbers).
        dtypes = {**({timestamp_column: "timestamp"} if timestamp_column else {}), **(dtypes or {})}
        try:
            cols = build_columns(read_columns(data, timestamp_columns=ts_cols), dtypes, "rows")
            tomb = build_columns(
                read_columns(tombstones, timestamp_columns=ts_cols) if tombstones is not None else None,
                dtypes,
                "tombstones",
            )
        except EncodeError as exc:
            raise PublisherError(f"cannot publish {view}: {exc}") from exc
        if isinstance(route, str):
            for name, cset in (("rows", cols), ("tombstones", tomb)):
                if cset and route not in cset:
                    raise PublisherError(f"the route column {route!r} is missing from the {name}")
        batches, unrouted = self._split(view, cols, tomb, route, keys, kind, skip_unrouted)
        data_cols = {k: c for k, c in cols.items() if not (isinstance(route, str) and k == route)}
        for key in keys:
            if data_cols and key not in data_cols:
                raise PublisherError(f"join key {key!r} is not a column of the rows ({list(data_cols)})")
        ts = timestamp_column if timestamp_column and timestamp_column in data_cols else None
        info = StreamInfo(
            view, "broadcast" if broadcast else "device", keys, {k: c.dtype for k, c in data_cols.items()}, ts
        )

        def run() -> tuple[list[TargetResult], list[Any]]:
            results, out = self.worker.log.publish(info, batches, snapshot=kind == "snapshot")
            return results, self.worker.send(out)

        try:
            results, infos = self._call(run, timeout)
        except MessageTooLargeError as exc:
            raise PublisherError(f"cannot publish {view}: {exc}") from exc
        if wait:
            self.connection.wait_published(infos, timeout)
        return PublishResult(view, kind, tuple(results), unrouted)

    def _split(
        self,
        view: str,
        cols: dict[str, Any],
        tomb: dict[str, Any],
        route: Route | None,
        keys: tuple[str, ...],
        kind: str,
        skip_unrouted: bool,
    ) -> tuple[dict[str, FeatureBatch], int]:
        if route is None:
            return {BROADCAST: FeatureBatch(view, cols, kind=kind, tombstones=tomb)}, 0
        groups, unrouted, data_cols = route_rows(cols, route, keys, what="rows") if cols else ({}, [], {})
        tgroups, tunrouted, tomb_cols = route_rows(tomb, route, keys, what="tombstones") if tomb else ({}, [], {})
        if (unrouted or tunrouted) and not skip_unrouted:
            where = f"row {unrouted[0]}" if unrouted else f"tombstone {tunrouted[0]}"
            raise PublisherError(
                f"{len(unrouted) + len(tunrouted)} rows of {view} have no device ({where} is the first); fix the "
                "route or pass skip_unrouted=True (--skip-unrouted)"
            )
        batches = {}
        for device in sorted(set(groups) | set(tgroups)):
            rows = gather(data_cols, groups.get(device, [])) if data_cols else {}
            dels = gather(tomb_cols, tgroups.get(device, [])) if tomb_cols else {}
            batches[device] = FeatureBatch(view, rows, kind=kind, tombstones=dels)
        return batches, len(unrouted) + len(tunrouted)

    # --- models ---------------------------------------------------------------------------------------------

    def release(
        self,
        bundle: str | Path,
        *,
        devices: Iterable[str] = (),
        canary_percent: float | None = None,
        signing_key: Any = None,
        expires_in: float | None = None,
        failure_threshold: float | None = None,
        chunk_size: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ReleaseResult:
        """Release the bundle at ``bundle`` (directory or ``.tar.gz``).

        To every device (default), to ``devices`` only, or to a canary of ``canary_percent`` % of the known
        fleet (plus ``devices`` counted as fleet). The bundle is copied into the release directory and signed
        there when unsigned (``signing_key`` or the config's); ``expires_in`` seconds adds
        ``metadata.expires_at`` to the signed manifest. A release halts itself when more than
        ``failure_threshold`` of its devices report a failed install. Returns once the retained manifest was
        acknowledged by the broker.
        """
        device_list = tuple(devices)
        scope = "canary" if canary_percent is not None else ("devices" if device_list else "all")
        threshold = self.config.failure_threshold if failure_threshold is None else failure_threshold
        if not 0 <= threshold < 1:
            raise ReleaseError(f"failure_threshold must be a fraction in [0, 1), got {threshold!r}")
        size = chunk_size or self.config.chunk_size
        if not 1 <= size <= self.config.max_message_bytes - 512:
            raise ReleaseError(f"chunk_size must be 1..{self.config.max_message_bytes - 512}, got {size}")
        expires = None
        if expires_in is not None:
            if expires_in <= 0:
                raise ReleaseError(f"expires_in must be positive seconds, got {expires_in}")
            expires = _dt.datetime.fromtimestamp(self.clock() + expires_in, _dt.timezone.utc)
        key = signing_key if signing_key is not None else self.config.signing_key
        prepared = prepare_bundle(bundle, self.config.releases_path, signing_key=key, expires_at=expires)

        def run() -> tuple[Release, list[str], list[Any]]:
            fleet = self.worker.ledger.devices()
            release, offered = self.worker.book.create(
                prepared,
                scope=scope,
                devices=device_list,
                percent=canary_percent,
                threshold=threshold,
                chunk_size=size,
                fleet=fleet,
            )
            try:
                out = self.worker.manifest_messages(release, offered)
            except MessageTooLargeError as exc:
                raise ReleaseError(
                    f"the manifest message of {release.channel} v{release.version} is too large ({exc}); "
                    "use a larger chunk size"
                ) from exc
            return release, offered, self.worker.send(out)

        release, offered, infos = self._call(run, timeout)
        self.connection.wait_published(infos, timeout)
        return ReleaseResult(release, tuple(offered))

    def halt(self, channel: str, version: int, reason: str = "halted by hand") -> Release:
        """Stop offering a release: clear its retained manifests where no download started."""

        def run() -> Release:
            release = self.worker.book.get(channel, version)
            if release is None:
                raise ReleaseError(f"no release {channel} v{version}")
            self.worker.book.halt(release, reason)
            halted = self.worker.book.by_id(release.id)
            self.worker.withdraw(halted)
            return halted

        return self._call(run)

    def releases(self) -> list[Release]:
        """Every release, newest first."""
        return self._call(lambda: self.worker.book.all())

    def release_targets(self, release_id: int) -> dict[str, tuple[int | None, str | None]]:
        """``{device: (started_us, outcome)}`` of a release."""
        return self._call(lambda: self.worker.book.targets(release_id))

    # --- ledger ---------------------------------------------------------------------------------------------

    def fleet_status(self) -> list[DeviceState]:
        """Desired vs reported state of every device (see :func:`fleet_status`)."""
        return self._call(lambda: self.worker.ledger.status())

    def telemetry_count(self, device: str | None = None) -> int:
        """Telemetry records stored (deduplicated)."""
        return self._call(lambda: self.worker.ledger.telemetry_count(device))


def fleet_status(db_path: str | Path) -> list[DeviceState]:
    """The fleet ledger of the publisher database at ``db_path`` (read without a broker connection)."""
    return _read_db(db_path, lambda conn: Ledger(conn, time.time).status())


def list_releases(db_path: str | Path) -> list[Release]:
    """Every release recorded in the publisher database at ``db_path``, newest first."""
    return _read_db(db_path, lambda conn: ReleaseBook(conn, time.time).all())


def _read_db(db_path: str | Path, read: Callable[[sqlite3.Connection], T]) -> T:
    path = Path(db_path)
    if not path.exists():
        raise PublisherError(f"{path}: no publisher database here (run cloud-sync cloud or publish first)")
    try:
        conn = open_db(path)
        try:
            return read(conn)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise PublisherError(f"{path}: cannot read the publisher database ({exc})") from exc
