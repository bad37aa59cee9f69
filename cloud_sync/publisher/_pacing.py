"""Pacing catch-up answers by the device's acks, so a replay never overruns the broker's per-client queue.

mosquitto silently drops QoS-1 messages beyond ``max_inflight_messages`` + ``max_queued_messages`` for a client
that does not keep up; a catch-up of hundreds of messages sent in one burst would lose its tail, and nothing would
tell the device the tail ever existed. So each (device, stream) answer is a flow with at most ``window`` messages
not yet acknowledged: the device acks every batch after its commit (naming the message id), each ack lets the
next message go, and messages not acknowledged within ``stall_s`` are sent again (the device drops duplicates).
A new catch-up or hello for the same stream replaces the flow; a flow that stalls ``max_stalls`` times in a row is
dropped (the device's next hello or catch-up request starts a fresh one).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ._log import Outgoing

WINDOW = 16
STALL_S = 2.0
MAX_STALLS = 5


@dataclass
class _Flow:
    queue: deque[Outgoing]
    inflight: dict[bytes, Outgoing] = field(default_factory=dict)
    last_progress: float = 0.0
    stalls: int = 0


class Pacer:
    """Per-(device, stream) flows of catch-up messages; driven by the worker thread only."""

    def __init__(
        self,
        send: Callable[[list[Outgoing]], object],
        *,
        window: int = WINDOW,
        stall_s: float = STALL_S,
        max_stalls: int = MAX_STALLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.window = window
        self.stall_s = stall_s
        self.max_stalls = max_stalls
        self._clock = clock
        self._flows: dict[tuple[str, str], _Flow] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def start(self, device: str, stream: str, messages: list[Outgoing]) -> None:
        """Send ``messages`` to ``device`` paced by its acks, replacing any flow of the same stream."""
        self._flows.pop((device, stream), None)
        if not messages:
            return
        flow = _Flow(deque(messages), last_progress=self._clock())
        self._flows[(device, stream)] = flow
        self._pump((device, stream), flow)

    def acked(self, device: str, stream: str, message_id: bytes) -> None:
        """The device committed (or dropped as duplicate) the message ``message_id``: let the next ones go."""
        key = (device, stream)
        flow = self._flows.get(key)
        if flow is None or flow.inflight.pop(message_id, None) is None:
            return
        flow.last_progress = self._clock()
        flow.stalls = 0
        self._pump(key, flow)

    def tick(self) -> None:
        """Resend what is overdue; drop flows that keep stalling."""
        now = self._clock()
        for key, flow in list(self._flows.items()):
            if now - flow.last_progress < self.stall_s:
                continue
            flow.stalls += 1
            if flow.stalls > self.max_stalls:
                del self._flows[key]
                continue
            flow.last_progress = now
            self._send(list(flow.inflight.values()))

    def _pump(self, key: tuple[str, str], flow: _Flow) -> None:
        batch = []
        while flow.queue and len(flow.inflight) < self.window:
            msg = flow.queue.popleft()
            flow.inflight[msg.message_id] = msg
            batch.append(msg)
        if batch:
            self._send(batch)
        if not flow.queue and not flow.inflight:
            del self._flows[key]
