"""The worker thread: owns the database's write connection, handles what devices send, runs submitted jobs.

MQTT callbacks only enqueue (see ``_client``); this thread takes each item in order: a received message
(hello → ledger + catch-up, features.catchup → replay or snapshot, ack/status → ledger + pacing, chunk
requests → chunks, install reports → ledger + canary halting, telemetry → store + ack) or a job submitted by
the API. Catch-up answers go out paced by the device's acks (``_pacing``). Nothing a device sends can stop it:
every failure is logged and counted.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from cloud_sync._errors import CloudSyncError, DecodeError, InvalidTopicError, PublisherError
from cloud_sync.protocol import (
    BROADCAST_DEVICE,
    Ack,
    CatchUpRequest,
    Codec,
    Direction,
    Hello,
    InstallReport,
    Message,
    MessageType,
    ModelChunk,
    ModelChunkRequest,
    Status,
    TelemetryAck,
    TelemetryBatch,
    Topics,
    check_route,
    decode_message,
    to_envelope,
)
from edge_runtime._errors import EdgeRuntimeError

from ._client import CloudConnection
from ._db import open_db
from ._ledger import Ledger
from ._log import CatchUpPlan, DeltaLog, Outgoing, open_log
from ._pacing import Pacer
from ._releases import Release, ReleaseBook

log = logging.getLogger("cloud_sync.publisher")
T = TypeVar("T")
#: How often paced catch-up flows are checked for overdue acks.
_TICK_S = 0.25
_NOTHING = object()


class _Job:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()


class Worker:
    """One thread, one write connection (see module docstring). ``jobs`` is shared with the MQTT callbacks."""

    def __init__(
        self,
        db_path: str,
        log_store: str,
        connection: CloudConnection,
        jobs: queue.Queue[Any],
        codec: Codec,
        topics: Topics,
        clock: Callable[[], float],
    ) -> None:
        self.db_path = db_path
        self.log_store = log_store
        self.mqtt = connection
        self.jobs = jobs
        self.codec = codec
        self.topics = topics
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self.pacer = Pacer(self.send)
        self._broadcast_prefix = f"{topics.prefix}/broadcast/"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cloud-sync-worker", daemon=True)
        # Set on the worker thread once the connection is open.
        self.conn: sqlite3.Connection
        self.log: DeltaLog
        self.book: ReleaseBook
        self.ledger: Ledger

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; returns once the database is open (raises what opening it raised)."""
        if self._thread.ident is not None:
            raise CloudSyncError("a CloudPublisher starts once; create a new one to start again")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Finish the queued items, then stop the thread."""
        if self._thread.is_alive():
            self.jobs.put(None)
            self._thread.join()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the worker thread; the future holds its result or exception."""
        if not self._thread.is_alive():
            raise CloudSyncError("the publisher is not running; call start() (or use it as a context manager)")
        job = _Job(fn)
        self.jobs.put(job)
        return job.future

    def _run(self) -> None:
        try:
            self.conn = open_db(self.db_path)
            self.log = open_log(self.log_store, self.conn, self.codec, self.topics, self.clock)
            self.book = ReleaseBook(self.conn, self.clock)
            self.ledger = Ledger(self.conn, self.clock)
        except (sqlite3.Error, OSError) as exc:
            self._error = PublisherError(f"{self.db_path}: cannot open the publisher database ({exc})")
            self._error.__cause__ = exc
            self._ready.set()
            return
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            last_tick = time.monotonic()
            while True:
                try:
                    item = self.jobs.get(timeout=_TICK_S if len(self.pacer) else None)
                except queue.Empty:
                    item = _NOTHING
                if item is None:
                    break
                if isinstance(item, _Job):
                    self._run_job(item)
                elif item is not _NOTHING:
                    self._handle(*item)
                if len(self.pacer) and time.monotonic() - last_tick >= _TICK_S:
                    last_tick = time.monotonic()
                    self.pacer.tick()
        finally:
            self.conn.close()

    def _run_job(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as exc:  # handed to the caller through the future
            job.future.set_exception(exc)

    # --- sending --------------------------------------------------------------------------------------------

    def send(self, messages: list[Outgoing]) -> list[Any]:
        """Publish messages (QoS 1); returns paho's infos to wait on."""
        self.stats["sent"] += len(messages)
        return [self.mqtt.publish(m.topic, m.payload, retain=m.retain) for m in messages]

    def message(
        self,
        device: str,
        mtype: MessageType,
        name: str | None,
        body: Message,
        retain: bool = False,
        *,
        compress: bool | None = None,
    ) -> Outgoing:
        """Encode ``body`` for ``device`` (``"*"``: broadcast) on its protocol topic."""
        payload = self.codec.encode(to_envelope(body, device=device), compress=compress)
        if device == BROADCAST_DEVICE:
            return Outgoing(self.topics.broadcast(mtype, name), payload, retain)
        return Outgoing(self.topics.down(device, mtype, name), payload, retain)

    def manifest_messages(self, release: Release, devices: list[str]) -> list[Outgoing]:
        """The retained manifest of ``release``: on the broadcast topic for ``all``, else on each device's."""
        body = release.manifest_message()
        if release.scope == "all":
            return [self.message(BROADCAST_DEVICE, MessageType.MODEL_MANIFEST, release.channel, body, True)]
        return [self.message(d, MessageType.MODEL_MANIFEST, release.channel, body, True) for d in devices]

    def withdraw(self, release: Release) -> list[Any]:
        """Clear the retained manifests of a halted release where nobody started downloading it. A fleet-wide
        one is replaced by the previous fleet-wide release of its channel, when there is one."""
        if release.scope == "all":
            previous = self.book.restore_previous(release)
            if previous is not None:
                log.warning("offering %s v%d to the fleet again", previous.channel, previous.version)
                return self.send(self.manifest_messages(previous, []))
            topics = [self.topics.broadcast(MessageType.MODEL_MANIFEST, release.channel)]
        else:
            topics = [
                self.topics.down(d, MessageType.MODEL_MANIFEST, release.channel)
                for d in self.book.unstarted_targets(release.id)
            ]
        return self.send([Outgoing(t, b"", True) for t in topics])

    # --- received messages ----------------------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes, retained: bool) -> None:
        self.stats["received"] += 1
        try:
            info = self.topics.parse(topic)
            if info.direction is not Direction.UP or info.device is None:
                return
            if not payload:  # a cleared retained message
                return
            envelope, message = decode_message(payload, codec=self.codec)
            check_route(info, envelope)
        except (InvalidTopicError, DecodeError) as exc:
            self.stats["rejected"] += 1
            log.warning("ignoring a message on %s: %s", topic, exc)
            return
        device = info.device
        try:
            self._dispatch(device, message, retained, envelope.sent_at)
        except (CloudSyncError, EdgeRuntimeError, sqlite3.Error, OSError) as exc:
            self.stats["errors"] += 1
            log.error("handling %s from %s failed: %s", envelope.type.value, device, exc)
        except Exception:  # a bug must not let one message stop the worker for every device
            self.stats["errors"] += 1
            log.exception("handling %s from %s failed", envelope.type.value, device)

    def _dispatch(self, device: str, message: Message, retained: bool, sent_at: int) -> None:
        if isinstance(message, Hello):
            self.stats["hello"] += 1
            self.on_hello(device, message)
        elif isinstance(message, CatchUpRequest):
            self.stats["catchup"] += 1
            self.answer(self.log.catch_up(device, message.stream, message.epoch, message.applied_seq))
        elif isinstance(message, Ack):
            self.stats["ack"] += 1
            self.ledger.on_ack(device, message)
            self.pacer.acked(device, message.stream, message.acked_id)
        elif isinstance(message, Status):
            self.ledger.on_status(device, message, retained=retained, sent_at_us=sent_at)
        elif isinstance(message, ModelChunkRequest):
            self.on_chunk_request(device, message)
        elif isinstance(message, InstallReport):
            self.on_install_report(device, message)
        elif isinstance(message, TelemetryBatch):
            self.stats["telemetry"] += 1
            self.ledger.on_telemetry(device, message)
            ack = TelemetryAck(tuple(r.id for r in message.records))
            self.send([self.message(device, MessageType.TELEMETRY_ACK, None, ack)])

    def answer(self, plan: CatchUpPlan) -> None:
        """Send what a catch-up plan decided."""
        if plan.action != "none":
            self.stats[f"catchup_{plan.action}"] += 1
            log.info(
                "catch-up %s/%s: %s epoch %d seq %d..%d (%d rows)",
                plan.device,
                plan.stream,
                plan.action,
                plan.epoch,
                plan.seq_first,
                plan.seq_last,
                plan.rows,
            )
        if any(m.topic.startswith(self._broadcast_prefix) for m in plan.messages):
            self.send(plan.messages)  # a fresh fleet-wide snapshot: one device's acks cannot pace the fleet
        else:
            self.pacer.start(plan.device, plan.stream, plan.messages)

    def on_hello(self, device: str, hello: Hello) -> None:
        """Ledger, new offers, then bring every stream of the device up to its head."""
        self.ledger.on_hello(device, hello)
        offers = [r for r in self.book.offer_new_device(device) if r.scope != "all"]
        for release in offers:
            self.send(self.manifest_messages(release, [device]))
        for stream, _target in self.log.streams_for_device(device):
            epoch, applied = hello.watermarks.get(stream, (0, 0))
            self.answer(self.log.catch_up(device, stream, epoch, applied))

    def on_chunk_request(self, device: str, req: ModelChunkRequest) -> None:
        """Serve the requested chunks when the release is offered to the device."""
        release = self.book.get(req.model, req.version)
        if release is None or not self.book.may_serve(release, device):
            self.stats["chunk_refused"] += 1
            self.ledger.seen(device, "chunk-request:refused")
            log.info("not serving %s v%d to %s", req.model, req.version, device)
            return
        if not self.book.started(release, device):
            self.book.mark_started(release, device)
        out = []
        for index in req.chunks:
            data = release.read_chunk(index)
            if data is not None:
                body = ModelChunk(release.channel, release.version, index, data)
                # Model weights barely shrink (~7 % for fp32) and trying costs ~2 ms per 64 KiB chunk.
                out.append(self.message(device, MessageType.MODEL_CHUNK, release.channel, body, compress=False))
        self.stats["chunks"] += len(out)
        self.send(out)

    def on_install_report(self, device: str, report: InstallReport) -> None:
        """Ledger; count failures against the release and halt it past its threshold."""
        release = self.book.get(report.model, report.version)
        self.ledger.on_install_report(device, release.model if release else report.model, report)
        if release is None:
            return
        why = self.book.record_outcome(release, device, report.outcome, report.reason)
        if why:
            self.stats["halted"] += 1
            log.warning("release %s v%d %s", release.channel, release.version, why)
            self.withdraw(self.book.by_id(release.id))
