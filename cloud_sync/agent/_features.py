"""Applying feature batches on the device: per-stream epoch/seq watermarks committed with the rows.

The watermark of stream ``s`` is the feature store state ``cloud_sync.wm.<s>`` = ``{"epoch": e, "applied": a}``
written in the same SQLite transaction as the rows it covers (see docs/sync-protocol.md §5.1 for the rules).
Batches that arrive ahead of the watermark are kept in a small in-memory buffer so a mere reordering heals
without a round trip; a catch-up request is sent anyway (rate-limited), because the missing batch may be lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud_sync.protocol import Ack, CatchUpRequest, Envelope, FeatureBatch

log = logging.getLogger(__name__)

WM_PREFIX = "cloud_sync.wm."
#: How long without progress before a catch-up request for the same gap is sent again.
CATCHUP_RETRY_S = 3.0
#: Batches kept per stream while waiting for a gap to fill.
BUFFER_LIMIT = 256

Sender = Callable[[Any, str | None], None]


@dataclass
class _Gap:
    sent_at: float
    watermark: tuple[int, int]
    seen: tuple[int, int]
    reason: str


class FeatureSync:
    """Applies ``features.batch`` messages to a :class:`~edge_runtime.FeatureStore`. Not thread-safe: the
    agent's worker thread is its only caller. ``send(message, name)`` publishes an ack or catch-up request."""

    def __init__(self, store: Any, send: Sender, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._send = send
        self._clock = clock
        self._buffer: dict[str, dict[tuple[int, int], tuple[Envelope, FeatureBatch]]] = {}
        self._gaps: dict[str, _Gap] = {}
        self.applied_batches = 0
        self.applied_rows = 0
        self.rejected_batches = 0

    # --- watermarks -------------------------------------------------------------------------------------------

    def watermark(self, stream: str) -> tuple[int, int] | None:
        """``(epoch, applied_seq)`` of ``stream``, or None when nothing was ever applied."""
        wm = self.store.get_state(WM_PREFIX + stream)
        if not isinstance(wm, dict):
            return None
        return int(wm.get("epoch", 0)), int(wm.get("applied", 0))

    def watermarks(self) -> dict[str, tuple[int, int]]:
        """Every feature view's watermark (views never synced are left out)."""
        out = {}
        for name in self._view_names():
            wm = self.watermark(name)
            if wm is not None:
                out[name] = wm
        return out

    def _view_names(self) -> list[str]:
        from edge_runtime.features import FeatureView

        return sorted(d.name for d in self.store.definitions() if type(d) is FeatureView)

    @property
    def waiting(self) -> dict[str, dict[str, Any]]:
        """Streams with an open gap: what was asked for and what was seen."""
        return {
            s: {"watermark": list(g.watermark), "seen": list(g.seen), "reason": g.reason}
            for s, g in list(self._gaps.items())  # called from other threads: iterate a copy
        }

    # --- applying ---------------------------------------------------------------------------------------------

    def handle(self, env: Envelope, batch: FeatureBatch) -> None:
        """Apply, drop, buffer or ask for a catch-up, by the batch's epoch/seq against the watermark."""
        stream = env.stream
        if batch.view != stream:
            self._ack(env, stream, "rejected", f"batch is for view {batch.view!r}, stream is {stream!r}")
            return
        self._handle_one(env, batch)
        self._drain_buffer(stream)

    def _handle_one(self, env: Envelope, batch: FeatureBatch) -> None:
        stream = env.stream
        wm = self.watermark(stream)
        e, a = wm if wm is not None else (0, 0)
        big_e, first, last = env.epoch, env.seq_first, env.seq_last
        if big_e < e or (big_e == e and last <= a):
            self._ack(env, stream, "duplicate")
            return
        if big_e == e and first <= a + 1:
            self._apply(env, batch, e, a)
            return
        starts_epoch = big_e > e and batch.kind == "snapshot" and batch.part == 0 and first == 1
        if starts_epoch:
            self._apply(env, batch, e, a)
            return
        self._keep(stream, env, batch)
        reason = "gap" if big_e == e else ("no_state" if wm is None else "new_epoch")
        self._ask(stream, (e, a), (big_e, last), reason)

    def _apply(self, env: Envelope, batch: FeatureBatch, e: int, a: int) -> None:
        from edge_runtime import EdgeRuntimeError, UnknownNameError

        stream, view = env.stream, batch.view
        state = {WM_PREFIX + stream: {"epoch": env.epoch, "applied": env.seq_last}}
        try:
            if batch.kind == "snapshot":
                self.store.write_snapshot_part(view, self._rows(batch), part=batch.part, parts=batch.parts, state=state)
            elif batch.num_tombstones:
                # Rows, tombstones and the watermark in one transaction: all of the message or none of it.
                self.store.apply_changes(view, self._rows(batch), batch.tombstone_columns(), state=state)
            else:
                self.store.write_to_online_store(view, self._rows(batch), state=state)
        except UnknownNameError as exc:
            # Nothing of this stream can be stored here: leave the watermark, report it.
            self.rejected_batches += 1
            self._ack(env, stream, "rejected", str(exc), watermark=(e, a))
            return
        except EdgeRuntimeError as exc:
            # A poison batch (rows that do not fit the view) must not block the stream forever: skip it, say so.
            log.warning("feature batch %s of %s rejected: %s", env.message_id.hex(), stream, exc)
            self.rejected_batches += 1
            self.store.write_to_online_store(view, [], state=state)
            self._ack(env, stream, "rejected", str(exc)[:4000])
            return
        self.applied_batches += 1
        self.applied_rows += batch.num_rows + batch.num_tombstones
        self._ack(env, stream, "applied")

    @staticmethod
    def _rows(batch: FeatureBatch) -> Any:
        return batch.to_columns() if batch.num_rows else []

    def _ack(
        self, env: Envelope, stream: str, status: str, detail: str = "", *, watermark: tuple[int, int] | None = None
    ) -> None:
        e, a = watermark or self.watermark(stream) or (0, 0)
        self._send(Ack(env.message_id, stream, e, a, status, detail), None)

    # --- gaps -------------------------------------------------------------------------------------------------

    def _keep(self, stream: str, env: Envelope, batch: FeatureBatch) -> None:
        buf = self._buffer.setdefault(stream, {})
        buf[(env.epoch, env.seq_first)] = (env, batch)
        while len(buf) > BUFFER_LIMIT:
            del buf[max(buf)]  # keep the ones closest to the watermark

    def _drain_buffer(self, stream: str) -> None:
        buf = self._buffer.get(stream)
        while buf:
            wm = self.watermark(stream) or (0, 0)
            usable = [k for k in buf if k[0] == wm[0] and k[1] <= wm[1] + 1]
            stale = [k for k in buf if k[0] < wm[0] or (k[0] == wm[0] and buf[k][0].seq_last <= wm[1])]
            for k in stale:
                if k not in usable:
                    del buf[k]
            if not usable:
                break
            env, batch = buf.pop(min(usable))
            self._handle_one(env, batch)
        wm = self.watermark(stream) or (0, 0)
        gap = self._gaps.get(stream)
        if gap is not None and wm >= gap.seen:
            del self._gaps[stream]
        if buf is not None and not buf:
            self._buffer.pop(stream, None)

    def _ask(self, stream: str, wm: tuple[int, int], seen: tuple[int, int], reason: str) -> None:
        now = self._clock()
        gap = self._gaps.get(stream)
        if gap is not None and gap.watermark == wm and now - gap.sent_at < CATCHUP_RETRY_S:
            gap.seen = max(gap.seen, seen)
            return
        self._gaps[stream] = _Gap(now, wm, max(seen, gap.seen) if gap else seen, reason)
        self._send(CatchUpRequest(stream, wm[0], wm[1], reason, seen[0], seen[1]), stream)

    def tick(self) -> None:
        """Resend catch-up requests that got no answer."""
        now = self._clock()
        for stream, gap in list(self._gaps.items()):
            wm = self.watermark(stream) or (0, 0)
            if wm >= gap.seen:
                del self._gaps[stream]
            elif now - gap.sent_at >= CATCHUP_RETRY_S:
                gap.sent_at = now
                gap.watermark = wm
                self._send(CatchUpRequest(stream, wm[0], wm[1], gap.reason, gap.seen[0], gap.seen[1]), stream)

    def forget_gaps(self) -> None:
        """After a reconnect the hello says it all: clear the retry timers (the buffer stays)."""
        self._gaps.clear()
