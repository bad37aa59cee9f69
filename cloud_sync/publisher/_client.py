"""The publisher's MQTT connection: paho-mqtt 2.x, MQTT 5, QoS 1, capped jittered reconnect backoff.

Callbacks only put received messages on a queue (a callback that blocks stalls paho's network thread and with
it the keepalive); the publisher's worker threads do the work.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

from cloud_sync._errors import PublisherError

from ._config import CloudConfig

log = logging.getLogger("cloud_sync.publisher")
#: A connection that lasted this long resets the reconnect backoff.
_STABLE_S = 30.0
#: MQTT 5 reason code of a DISCONNECT sent because another client connected with the same client id.
_SESSION_TAKEN_OVER = 0x8E
#: One received message: (topic, payload, retained).
Inbound = tuple[str, bytes, bool]


class CloudConnection:
    """One paho client for the cloud user, connected in the background.

    ``subscribe`` lists the topic filters to (re)subscribe on every connect; received messages land on
    ``inbox``. ``persistent`` keeps an MQTT 5 session (clean_start=False, SessionExpiryInterval) under
    ``client_id`` so the broker queues device messages while the worker is down; one-shot commands use a
    throwaway clean session with a random id instead, so they never steal the worker's session.
    """

    def __init__(
        self,
        config: CloudConfig,
        *,
        subscribe: Iterable[str] = (),
        persistent: bool = False,
        inbox: queue.Queue[Inbound] | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.config = config
        self.inbox: queue.Queue[Inbound] = inbox if inbox is not None else queue.Queue()
        self._filters = list(subscribe)
        self._persistent = persistent
        client_id = config.client_id if persistent else f"cloud-sync-{uuid.uuid4().hex[:12]}"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            transport=config.transport,  # type: ignore[arg-type]
        )
        self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set(ca_certs=str(config.ca_file) if config.ca_file else None)
        # Unlimited client-side queue: the delta log, not paho, is the record; 50 in flight keeps loopback busy.
        self._client.max_inflight_messages_set(50)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._sub_mid: int | None = None
        self._connected = threading.Event()
        self._attempt = 0
        self._connected_at: float | None = None
        self._client_id = client_id
        self._last_error = ""
        self._started = False
        #: Successful connections so far (a reconnect makes it grow).
        self.connects = 0
        #: The wait before the next reconnect attempt, in seconds.
        self.next_delay = 0.0
        self._set_backoff()

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> CloudConnection:
        """Start connecting in the background (``connect_async``); returns at once, even while offline."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self._started:
            return self
        props = Properties(PacketTypes.CONNECT)
        if self._persistent and self.config.session_expiry_s:
            props.SessionExpiryInterval = self.config.session_expiry_s
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=not self._persistent,
            properties=props,
        )
        self._client.loop_start()
        self._started = True
        return self

    def wait_connected(self, timeout: float) -> None:
        """Block until connected; PublisherError naming the broker and the last error after ``timeout``."""
        if not self._connected.wait(timeout):
            why = f": {self._last_error}" if self._last_error else ""
            raise PublisherError(f"could not connect to the broker at {self.config.broker_url} in {timeout:g} s{why}")

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._connected.is_set()

    def stop(self, *, drain_s: float = 5.0) -> None:
        """Wait up to ``drain_s`` for queued publishes to be acknowledged, then disconnect."""
        if not self._started:
            return
        deadline = time.monotonic() + drain_s
        while self.pending() and self.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False
        self._connected.clear()

    def pending(self) -> int:
        """QoS-1 publishes not yet acknowledged by the broker."""
        return len(getattr(self._client, "_out_messages", ()))

    # --- publishing -----------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Any:
        """Queue a QoS-1 publish; returns paho's MQTTMessageInfo (``wait_for_publish`` blocks until PUBACK).

        While disconnected paho keeps the message and sends it after reconnecting.
        """
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def wait_published(self, infos: Iterable[Any], timeout: float) -> None:
        """Block until every publish in ``infos`` was acknowledged; PublisherError after ``timeout``."""
        deadline = time.monotonic() + timeout
        for info in infos:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(max(remaining, 0.001))
            except (RuntimeError, ValueError) as exc:
                raise PublisherError(f"publish to {self.config.broker_url} failed: {exc}") from exc
            if not info.is_published():
                raise PublisherError(
                    f"the broker at {self.config.broker_url} did not acknowledge every message in {timeout:g} s"
                )

    # --- callbacks (network thread: never block) -------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._last_error = f"broker refused the connection: {reason_code}"
            return
        # The backoff is not reset here: a link that drops right after CONNACK (a duplicate client id taking the
        # session over, an ACL kick) must keep backing off instead of ping-ponging; see _on_disconnect.
        self._connected_at = time.monotonic()
        self._last_error = ""
        self.connects += 1
        if self._filters:
            # "Connected" once the SUBACK is in: nothing a device sends after that can be missed.
            _, self._sub_mid = client.subscribe([(f, 1) for f in self._filters])
        else:
            self._connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if mid != self._sub_mid:
            return
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            self._last_error = f"the broker refused the subscription: {', '.join(failed)}"
            return
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._connected.clear()
        self._last_error = f"disconnected: {reason_code}"
        if self._connected_at is not None and time.monotonic() - self._connected_at >= _STABLE_S:
            self._attempt = 0  # the link was healthy for a while: start the backoff over
        self._connected_at = None
        if getattr(reason_code, "value", None) == _SESSION_TAKEN_OVER:
            log.warning(
                "another client connected with client id %r and took the session over; give every worker its "
                "own client_id",
                self._client_id,
            )
        self._set_backoff()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._last_error = "connection failed (broker unreachable?)"
        self._set_backoff()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.inbox.put((message.topic, bytes(message.payload), bool(message.retain)))

    def _set_backoff(self) -> None:
        """Full-jitter exponential backoff, capped: paho waits its min delay, which we re-draw each time."""
        cap = min(self.config.reconnect_max_s, self.config.reconnect_min_s * 2 ** min(self._attempt, 20))
        delay = random.uniform(self.config.reconnect_min_s, max(cap, self.config.reconnect_min_s))
        self._attempt += 1
        self.next_delay = delay
        # paho's type hints say int; it sleeps on floats just fine.
        self._client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]
