"""``DeviceAgent``: keeps one device's feature cache and models in sync with the cloud over MQTT.

Threads: paho's network thread runs the callbacks, which only put events on a queue; one worker thread takes
them off and does everything else — decoding, every SQLite write (feature store, agent state, outbox acks),
file writes and installs — so a slow disk or a model health check never stalls the keepalive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from cloud_sync._errors import CloudSyncError, ConfigError, DecodeError, InvalidTopicError, MessageTooLargeError
from cloud_sync.protocol import (
    Codec,
    FeatureBatch,
    Hello,
    MessageType,
    ModelChunk,
    ModelManifestMessage,
    Status,
    TelemetryAck,
    TelemetryBatch,
    TelemetryRecord,
    Topics,
    check_route,
    decode_message,
    to_envelope,
    validate_device_id,
)
from edge_runtime import FeatureStore, ModelStore, RuntimeSettings, SyncSettings
from edge_runtime.models import runnable_formats

from ._credentials import Credentials, load_credentials
from ._features import FeatureSync
from ._link import _PROTOCOL_REFUSED, BrokerAddress, ConnectionState, Event, Link
from ._lock import AgentLock
from ._models import ModelSync
from ._policy import DownloadGate
from ._state import AgentState

log = logging.getLogger(__name__)

AGENT_VERSION = "cloud_sync-agent/1"
TICK_S = 0.25
TELEMETRY_EVERY_S = 5.0
TELEMETRY_RESEND_S = 10.0
_ERRORS_KEPT = 20
#: A broker that neither answers nor closes an MQTT 5 CONNECT this long is tried with MQTT 3.1.1.
CONNACK_TIMEOUT_S = 5.0


class DeviceAgent:
    """The device side of the sync protocol (docs/agent.md).

    Build it with :meth:`for_runtime` from an :class:`~edge_runtime.EdgeRuntime`, or from explicit stores:
    ``features`` (FeatureStore), ``models`` (ModelStore), optionally ``outbox`` (telemetry Outbox), a
    ``data_dir`` for the agent's own state and partial downloads, and the profile's ``SyncSettings``.
    ``credentials`` overrides ``settings.credentials_file``. ``wall_clock`` (epoch seconds) drives expiry and
    the download policy, for tests. ``window`` is the number of model chunks requested at once.
    ``hello_interval_s``: besides every connect, the hello (with the watermarks) is repeated this often, so the
    cloud notices and resends the tail of a stream the broker dropped (nothing after it would reveal the gap).
    """

    def __init__(
        self,
        settings: SyncSettings,
        *,
        features: FeatureStore,
        models: ModelStore,
        data_dir: str | Path,
        outbox: Any = None,
        variant_preference: tuple[str, ...] = RuntimeSettings().variant_preference,
        credentials: Credentials | None = None,
        wall_clock: Any = time.time,
        codec: Codec | None = None,
        window: int = 16,
        hello_interval_s: float = 60.0,
    ) -> None:
        from edge_runtime.models import TrustedKeys

        self.settings = settings
        self.device_id = validate_device_id(settings.device_id)
        self.topics = Topics(settings.topic_prefix)
        self.address = BrokerAddress.parse(settings.broker_url)
        if credentials is None and settings.credentials_file is not None:
            credentials = load_credentials(settings.credentials_file)
        self.credentials = credentials
        self.features_store = features
        self.model_store = models
        self.outbox = outbox
        self.codec = codec or Codec()
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._events: queue.Queue[Event] = queue.Queue()
        self._state = AgentState(self.data_dir / "agent.db")
        self._lock = AgentLock(self.data_dir)
        self._wall = wall_clock
        trusted = TrustedKeys(settings.trusted_keys) if settings.trusted_keys else None
        self.features = FeatureSync(features, self._send)
        self.models = ModelSync(
            models,
            self._state,
            self.data_dir / "downloads",
            self._send,
            trusted=trusted,
            preference=tuple(variant_preference),
            gate=DownloadGate(settings.download, self._state.bytes_on, clock=wall_clock),
            wall_clock=wall_clock,
            on_installed=self._announce,
            window=window,
        )
        self._variants = [v for v in variant_preference if v.split("-")[0] in runnable_formats()]
        self.link = Link(
            self.address,
            credentials,
            client_id=self.device_id,
            subscriptions=self.topics.device_subscriptions(self.device_id),
            will=(self._topic(MessageType.STATUS), self._encode(Status("offline", AGENT_VERSION))),
            events=self._events,
            keepalive_s=settings.keepalive_s,
            reconnect=(settings.reconnect_min_s, settings.reconnect_max_s),
        )
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._errors: deque[dict[str, Any]] = deque(maxlen=_ERRORS_KEPT)
        self._telemetry_sent: dict[str, float] = {}
        self._no_connack = 0
        self._closed = False
        self._next_telemetry = 0.0
        self.counters = {"received": 0, "rejected": 0, "sent": 0, "telemetry_sent": 0, "telemetry_acked": 0}
        self.hello_interval_s = hello_interval_s
        self._next_hello = float("inf")
        self.connected_at_us: int | None = None
        self.connects = 0

    @classmethod
    def for_runtime(cls, rt: Any, **kwargs: Any) -> DeviceAgent:
        """The agent for an :class:`~edge_runtime.EdgeRuntime` whose profile has a ``[sync]`` section."""
        if rt.config.sync is None:
            raise ConfigError(
                "sync is off in the profile (no [sync] section, or enabled = false)",
                key="sync",
                expected="a [sync] table",
            )
        outbox = rt.telemetry.outbox if rt.telemetry is not None else None
        kwargs.setdefault("variant_preference", rt.config.runtime.variant_preference)
        # One clock for the device: manifest expiry and download hours follow the runtime's (tests skew it).
        kwargs.setdefault("wall_clock", rt.clock)
        return cls(
            rt.config.sync,
            features=rt.features,
            models=rt.models,
            outbox=outbox,
            data_dir=Path(rt.data_dir) / "sync",
            **kwargs,
        )

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> DeviceAgent:
        """Start connecting (in the background; the broker may be down) and processing. Returns at once."""
        if self._worker is not None:
            return self
        if self._closed:
            raise CloudSyncError("a stopped DeviceAgent cannot be started again; create a new one")
        # One agent per data directory: a second one would take the device's MQTT session from the first.
        self._lock.acquire()  # raises AgentLockedError (with the holder's pid) when held elsewhere
        self._stopping.clear()
        self._worker = threading.Thread(target=self._run, name=f"sync-agent-{self.device_id}", daemon=True)
        self._worker.start()
        self.link.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Publish a retained ``offline`` status, disconnect and stop the worker (pending work stays durable)."""
        if self._worker is None:
            return
        self._stopping.set()
        self._events.put(("stop",))
        self._worker.join(timeout)
        self._worker = None
        self.link.stop(final=(self._topic(MessageType.STATUS), self._encode(self._status_message("offline"))))
        self._state.close()
        self._lock.release()
        self._closed = True

    def __enter__(self) -> DeviceAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- status -----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot: connection state, watermarks, model versions, downloads, recent errors."""
        try:
            wms = {s: {"epoch": e, "applied": a} for s, (e, a) in self.features.watermarks().items()}
        except Exception as exc:  # a closed store must not break status()
            wms = {"error": str(exc)}  # type: ignore[dict-item]
        return {
            "device_id": self.device_id,
            "broker": self.settings.broker_url,
            "connection": self.link.state.value,
            "protocol": "5" if self.link.protocol == 5 else "3.1.1",
            "connected_at_us": self.connected_at_us,
            "connects": self.connects,
            "watermarks": wms,
            "waiting_streams": self.features.waiting,
            "models": self._model_versions(),
            "pending_downloads": self.models.status(),
            "install_reports": dict(self.models.last_reports),
            "telemetry_pending": len(self.outbox) if self.outbox is not None else 0,
            "counters": {
                **self.counters,
                "applied_batches": self.features.applied_batches,
                "applied_rows": self.features.applied_rows,
                "rejected_batches": self.features.rejected_batches,
            },
            "last_errors": list(self._errors),
        }

    @property
    def connection_state(self) -> ConnectionState:
        """The broker connection's state."""
        return self.link.state

    def _model_versions(self) -> dict[str, int]:
        out = {}
        for name in self.model_store.names():
            v = self.model_store.active_version(name)
            if v is not None:
                out[name] = v
        return out

    def _error(self, where: str, exc: BaseException | str) -> None:
        self._errors.append({"at_us": time.time_ns() // 1000, "where": where, "error": str(exc)[:500]})

    # --- the worker -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stopping.is_set():
            wait = max(0.0, min(next_tick, self.models.next_deadline()) - time.monotonic())
            try:
                event = self._events.get(timeout=min(wait, TICK_S))
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._dispatch(event)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._tick(now)
                elif now >= self.models.next_deadline():
                    self.models.tick()
            except Exception as exc:  # the agent must survive anything; the cache stays as committed
                log.exception("sync agent: handling %s failed", event[0] if event else "tick")
                self._error("worker", exc)

    def _dispatch(self, event: Event) -> None:
        kind = event[0]
        if kind == "message":
            self._on_message(event[1], event[2])
        elif kind == "connected":
            self._no_connack = 0
            self.connects += 1
            self.connected_at_us = time.time_ns() // 1000
            self._announce()
            self.models.resend_all()
            self._telemetry_sent.clear()
            self._next_telemetry = 0.0
        elif kind == "refused":
            self._error("connect", f"connection refused by the broker: {event[2]}")
            if event[1] in _PROTOCOL_REFUSED and self.link.protocol == 5:
                self.link.switch_protocol()
        elif kind == "disconnected":
            log.info("disconnected from %s: %s", self.settings.broker_url, event[1])
            if event[2]:  # closed before any CONNACK: maybe the broker cannot parse this protocol version
                self._no_connack += 1
                if self._no_connack >= 2:
                    self._no_connack = 0
                    self._error(
                        "connect", "the broker closed the connection twice before answering; switching protocol"
                    )
                    self.link.switch_protocol()

    def _tick(self, now: float) -> None:
        since = self.link.awaiting_connack_since
        if since is not None and now - since > CONNACK_TIMEOUT_S:
            self._error("connect", f"no CONNACK within {CONNACK_TIMEOUT_S:.0f} s; switching protocol")
            self.link.switch_protocol()
        self.features.tick()
        self.models.tick()
        if now >= self._next_hello and self.link.connected:
            self._next_hello = now + self.hello_interval_s
            self._send(self._hello(), None)
        if self.outbox is not None and now >= self._next_telemetry and self.link.connected:
            self._next_telemetry = now + TELEMETRY_EVERY_S
            self._drain_telemetry(now)

    def process_message(self, topic: str, payload: bytes) -> None:
        """Handle one received message in the calling thread, exactly as the worker would.

        For an agent that is not started (benchmarks, replaying captured traffic): the worker owns the stores
        while it runs, so this raises :class:`~cloud_sync.CloudSyncError` then.
        """
        if self._worker is not None:
            raise CloudSyncError("process_message() is for a stopped agent; a running agent's worker owns the stores")
        self._on_message(topic, payload)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.counters["received"] += 1
        try:
            info = self.topics.parse(topic)
            if info.device is not None and info.device != self.device_id:
                raise InvalidTopicError("a message for another device", value=topic)
            try:
                env, msg = decode_message(payload, codec=self.codec)
            except DecodeError as exc:
                if exc.reason == "truncated" and not payload and info.type is MessageType.MODEL_MANIFEST:
                    self.models.clear_offer(info.name or "")
                    return
                raise
            check_route(info, env)
        except CloudSyncError as exc:
            self.counters["rejected"] += 1
            log.warning("rejected a message on %s: %s", topic, exc)
            self._error(f"message on {topic}", exc)
            return
        if isinstance(msg, FeatureBatch):
            self.features.handle(env, msg)
        elif isinstance(msg, ModelManifestMessage):
            self.models.on_manifest(info.name or msg.model, msg)
        elif isinstance(msg, ModelChunk):
            self.models.on_chunk(info.name or msg.model, msg)
        elif isinstance(msg, TelemetryAck):
            self._on_telemetry_ack(msg)

    # --- sending ----------------------------------------------------------------------------------------------

    def _topic(self, mtype: MessageType, name: str | None = None) -> str:
        return self.topics.up(self.device_id, mtype, name)

    def _encode(self, message: Any, stream: str = "") -> bytes:
        return self.codec.encode(to_envelope(message, device=self.device_id, stream=stream))

    def _send(self, message: Any, name: str | None) -> None:
        """Publish one device → cloud message (dropped when offline: every sender can recover from that)."""
        mtype = message.TYPE
        stream = getattr(message, "stream", "") or ""
        payload = self._encode(message, stream)
        if self.link.publish(self._topic(mtype, name), payload, retain=mtype is MessageType.STATUS):
            self.counters["sent"] += 1

    def _status_message(self, state: str) -> Status:
        return Status(state, AGENT_VERSION, self._model_versions(), "")

    def _announce(self) -> None:
        """Retained online status, then hello with watermarks and model versions."""
        self._send(self._status_message("online"), None)
        self._send(self._hello(), None)
        self._next_hello = time.monotonic() + self.hello_interval_s

    def _hello(self) -> Hello:
        caps = ("variants:" + ",".join(self._variants),) if self._variants else ()
        return Hello(AGENT_VERSION, self.features.watermarks(), self._model_versions(), capabilities=caps)

    # --- telemetry --------------------------------------------------------------------------------------------

    def _drain_telemetry(self, now: float) -> None:
        assert self.outbox is not None
        items = [
            i for i in self.outbox.pending(100) if now - self._telemetry_sent.get(i.id, -1e9) >= TELEMETRY_RESEND_S
        ]
        records = []
        for item in items:
            try:
                rid = bytes.fromhex(item.id)
            except ValueError:
                continue
            if len(rid) != 16:
                continue
            records.append(TelemetryRecord(rid, item.kind[:128], item.created_us, {"json": json.dumps(item.payload)}))
        if not records:
            return
        for item in items:
            self._telemetry_sent[item.id] = now
        groups = [records]
        while groups:
            group = groups.pop()
            try:
                payload = self._encode(TelemetryBatch(tuple(group)))
            except MessageTooLargeError:
                if len(group) == 1:  # can never be sent: drop it rather than block the outbox forever
                    log.error("telemetry record %s is too large to send; dropped", group[0].id.hex())
                    self._error("telemetry", f"record {group[0].id.hex()} too large; dropped")
                    self.outbox.mark_sent([group[0].id.hex()])
                    continue
                half = len(group) // 2
                groups += [group[:half], group[half:]]
                continue
            if self.link.publish(self._topic(MessageType.TELEMETRY_BATCH), payload):
                self.counters["sent"] += 1
        self.counters["telemetry_sent"] += len(records)

    def _on_telemetry_ack(self, ack: TelemetryAck) -> None:
        if self.outbox is None:
            return
        ids = [i.hex() for i in ack.ids]
        self.counters["telemetry_acked"] += self.outbox.mark_sent(ids)
        for i in ids:
            self._telemetry_sent.pop(i, None)
