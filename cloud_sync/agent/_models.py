"""Model updates on the device: verify a signed manifest, pick a variant, fetch chunks in a sliding window into a
resumable ``.part`` file, verify, install through the model store and report the outcome."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_sync.protocol import InstallReport, ModelChunk, ModelChunkRequest, ModelManifestMessage
from edge_runtime.models import runnable_formats

from ._policy import DownloadGate
from ._state import AgentState

log = logging.getLogger(__name__)

#: Chunks in flight at once (requested in halves of it), and how long one may stay unanswered before it is
#: requested again. Measured (benchmarks/test_bench_sync.py, 20 MB over loopback with a thread predicting):
#: a window of 4 takes ~4 s, 16 ~1.5 s — every chunk costs thread hand-offs that wait for the GIL while the app
#: predicts, and a larger window moves more chunks per hand-off. 16 x 64 KiB = 1 MiB in flight, below
#: mosquitto's default max_inflight_messages (20), so the broker never queues them behind each other.
WINDOW = 16
CHUNK_TIMEOUT_S = 2.0
#: Offers of one model arriving within this long of each other are compared before one is chosen.
SETTLE_S = 0.3

Sender = Callable[[Any, str | None], None]


class Refused(Exception):
    """A manifest that must not be installed; the message says why (reported as outcome ``refused``)."""


@dataclass
class Offer:
    """One verified release of a model variant, as received on ``transfer`` (the manifest topic's name)."""

    transfer: str
    message: ModelManifestMessage
    manifest: Any
    variant: str

    @property
    def model(self) -> str:
        """The model's name (from the signed manifest)."""
        return str(self.manifest.name)

    @property
    def key(self) -> str:
        """The name of this transfer's files and records."""
        return f"{self.model}-v{self.message.version}-{self.message.sha256.hex()[:16]}"


@dataclass
class Transfer:
    """A download in progress."""

    offer: Offer
    part_path: Path
    received: set[int] = field(default_factory=set)
    in_flight: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    bad_chunks: int = 0
    deferred: str | None = None

    @property
    def missing(self) -> list[int]:
        """Indices neither received nor requested."""
        n = self.offer.message.chunk_count
        return [i for i in range(n) if i not in self.received and i not in self.in_flight]

    def chunk_len(self, idx: int) -> int:
        """Size of chunk ``idx`` in bytes."""
        m = self.offer.message
        return min(m.chunk_size, m.size - idx * m.chunk_size)


def verify_offer(msg: ModelManifestMessage, trusted: Any, *, now: float) -> tuple[Any, str]:
    """Check a manifest message before anything is downloaded; returns (Manifest, variant) or raises Refused."""
    from edge_runtime import EdgeRuntimeError
    from edge_runtime.models import Manifest, Signature

    if trusted is None or not len(trusted):
        raise Refused("no trusted keys are configured (sync.trusted_keys); unsigned updates are never installed")
    if not msg.signature:
        raise Refused("the manifest is not signed")
    try:
        key = trusted.verify(msg.manifest, Signature.from_json(msg.signature))
        manifest = Manifest.from_json(msg.manifest)
    except EdgeRuntimeError as exc:
        raise Refused(str(exc)) from None
    if manifest.version != msg.version or manifest.size != msg.size or manifest.sha256 != msg.sha256.hex():
        raise Refused("the transfer plan (version, size or sha256) does not match the signed manifest")
    meta = dict(manifest.metadata or {})
    expires = meta.get("expires_at")
    if expires is not None:
        try:
            when = _dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError("no timezone")
        except ValueError:
            raise Refused(f"metadata.expires_at {expires!r} is not an ISO-8601 UTC time") from None
        if when.timestamp() < now:
            raise Refused(f"the release expired at {expires}")
    variant = str(meta.get("variant") or f"{manifest.format}-fp32")
    log.debug("manifest %s v%s signed by %s", manifest.name, manifest.version, key)
    return manifest, variant


class ModelSync:
    """Runs model updates for the agent's worker thread (its only caller)."""

    def __init__(
        self,
        store: Any,
        state: AgentState,
        directory: Path,
        send: Sender,
        *,
        trusted: Any,
        preference: tuple[str, ...],
        gate: DownloadGate,
        wall_clock: Callable[[], float] = time.time,
        on_installed: Callable[[], None] = lambda: None,
        window: int = WINDOW,
    ) -> None:
        self.store = store
        self.state = state
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._send = send
        self._trusted = trusted
        self._preference = preference
        self._gate = gate
        self._wall = wall_clock
        self._on_installed = on_installed
        self.window = window
        self._formats = runnable_formats()
        self._offers: dict[str, dict[str, Offer]] = {}
        self._settle: dict[str, float] = {}
        self._refused: set[tuple[str, int, bytes]] = set()
        self._failed: set[str] = set()
        self.transfers: dict[str, Transfer] = {}
        self.last_reports: dict[str, dict[str, Any]] = {}

    # --- manifests --------------------------------------------------------------------------------------------

    def on_manifest(self, transfer: str, msg: ModelManifestMessage) -> None:
        """A (retained) release arrived on ``<...>/models/<transfer>/manifest``."""
        try:
            manifest, variant = verify_offer(msg, self._trusted, now=self._wall())
        except Refused as exc:
            self._refuse(transfer, msg, str(exc))
            return
        offer = Offer(transfer, msg, manifest, variant)
        self._offers.setdefault(offer.model, {})[transfer] = offer
        # Wait a moment for the other variants of the release, unless this is already the device's first choice
        # (a later offer could only be a newer version, which would replace the transfer anyway).
        top = next((v for v in self._preference if v.split("-")[0] in self._formats), None)
        self._settle[offer.model] = time.monotonic() + (0.0 if variant == top else SETTLE_S)

    def next_deadline(self) -> float:
        """The earliest monotonic time at which :meth:`tick` has something to do (inf when nothing)."""
        times = list(self._settle.values())
        for t in self.transfers.values():
            times.extend(at + CHUNK_TIMEOUT_S for at in t.in_flight.values())
        return min(times, default=float("inf"))

    def clear_offer(self, transfer: str) -> None:
        """An empty retained payload withdrew the release on ``transfer``."""
        for offers in self._offers.values():
            offers.pop(transfer, None)

    def _refuse(self, transfer: str, msg: ModelManifestMessage, reason: str) -> None:
        token = (transfer, msg.version, msg.sha256)
        if token in self._refused:
            return
        self._refused.add(token)
        log.warning("model release %s v%s refused: %s", transfer, msg.version, reason)
        active = self.store.active_version(msg.model) or 0
        self._report(transfer, msg.version, "refused", reason, active, 0)

    def _choose(self, model: str) -> None:
        offers = self._offers.get(model, {})
        active = self.store.active_version(model) or 0
        runnable = [o for o in offers.values() if o.variant in self._preference and o.manifest.format in self._formats]
        if not runnable:
            if offers:
                first = next(iter(offers.values()))
                self._refuse(
                    first.transfer,
                    first.message,
                    f"no offered variant ({', '.join(sorted(o.variant for o in offers.values()))}) is allowed by "
                    f"runtime.variant_preference and runnable here (formats: {', '.join(sorted(self._formats))})",
                )
            return
        runnable = [o for o in runnable if o.key not in self._failed]
        if not runnable:
            return
        best = min(runnable, key=lambda o: (-o.message.version, self._preference.index(o.variant)))
        version = best.message.version
        if version == active:
            return
        if version < active:
            self._refuse(best.transfer, best.message, f"v{version} is older than the active v{active} (downgrade)")
            return
        current = self.transfers.get(model)
        if current is not None:
            if current.offer.key == best.key:
                return
            self._abandon(current)
        self._start(best)

    # --- transfers --------------------------------------------------------------------------------------------

    def _start(self, offer: Offer) -> None:
        msg = offer.message
        self.state.begin_transfer(offer.key, offer.model, offer.transfer, msg.version, msg.encode_body())
        part = self.directory / f"{offer.key}.part"
        with open(part, "ab") as fh:
            if fh.tell() > msg.size:
                fh.truncate(msg.size)
        t = Transfer(offer, part)
        recorded = self.state.received(offer.key)
        if recorded:
            good = self._verify_recorded(t, recorded)
            if recorded - good:
                self.state.forget_chunks(offer.key, recorded - good)
            t.received = good
            log.info("resuming %s: %d of %d chunks already here", offer.key, len(good), msg.chunk_count)
        self.transfers[offer.model] = t
        self._pump(t)

    def _verify_recorded(self, t: Transfer, recorded: set[int]) -> set[int]:
        good = set()
        digests = t.offer.message.chunk_sha256
        with open(t.part_path, "rb") as fh:
            for idx in sorted(recorded):
                if idx >= len(digests):
                    continue
                fh.seek(idx * t.offer.message.chunk_size)
                if hashlib.sha256(fh.read(t.chunk_len(idx))).digest() == digests[idx]:
                    good.add(idx)
        return good

    def _abandon(self, t: Transfer) -> None:
        self.transfers.pop(t.offer.model, None)
        self.state.end_transfer(t.offer.key)
        t.part_path.unlink(missing_ok=True)

    def _pump(self, t: Transfer) -> None:
        """Top the window up with chunk requests, as the policy allows."""
        if len(t.received) == t.offer.message.chunk_count:
            self._finish(t)
            return
        # Refill once half the window is free: fewer, slightly larger requests halve the cloud's per-request work
        # while the other half of the window keeps the pipe busy.
        if t.in_flight and self.window - len(t.in_flight) < max(1, self.window // 2):
            return
        want: list[int] = []
        in_flight_bytes = sum(t.chunk_len(i) for i in t.in_flight)
        for idx in t.missing:
            if len(t.in_flight) + len(want) >= self.window:
                break
            nbytes = t.chunk_len(idx)
            why = self._gate.blocked(nbytes, in_flight_bytes)
            if why is not None:
                if not t.in_flight and not want:
                    if t.deferred != why:
                        log.info("download of %s deferred: %s", t.offer.key, why)
                    t.deferred = why
                break
            in_flight_bytes += nbytes
            want.append(idx)
        if want:
            t.deferred = None
            now = time.monotonic()
            for idx in want:
                t.in_flight[idx] = now
            m = t.offer.message
            self._send(ModelChunkRequest(t.offer.transfer, m.version, tuple(want)), t.offer.transfer)

    def on_chunk(self, transfer: str, chunk: ModelChunk) -> None:
        """A chunk arrived: check it against the manifest's list, write it, record it, ask for more."""
        t = next((x for x in self.transfers.values() if x.offer.transfer == transfer), None)
        if t is None or chunk.version != t.offer.message.version or chunk.model != transfer:
            return  # a late chunk of an abandoned or finished transfer
        idx = chunk.index
        m = t.offer.message
        if idx >= m.chunk_count or idx in t.received:
            t.in_flight.pop(idx, None)
            return
        t.in_flight.pop(idx, None)
        if len(chunk.data) != t.chunk_len(idx) or hashlib.sha256(chunk.data).digest() != m.chunk_sha256[idx]:
            t.bad_chunks += 1
            log.warning("chunk %d of %s failed its hash check; fetching it again", idx, t.offer.key)
            self.state.add_bytes(self._gate.day(), len(chunk.data))
        else:
            fd = os.open(t.part_path, os.O_WRONLY)
            try:
                os.pwrite(fd, chunk.data, idx * m.chunk_size)
            finally:
                os.close(fd)
            self.state.record_chunk(t.offer.key, idx, self._gate.day(), len(chunk.data))
            t.received.add(idx)
        self._pump(t)

    def _finish(self, t: Transfer) -> None:
        from edge_runtime import EdgeRuntimeError, HealthCheckError

        offer, m = t.offer, t.offer.message
        self.transfers.pop(offer.model, None)
        t0 = time.monotonic()
        digest = hashlib.sha256()
        with open(t.part_path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        previous = self.store.active_version(offer.model) or 0
        if digest.digest() != m.sha256:
            # Every chunk matched its hash yet the whole does not: the chunk list lies. Start over, from scratch.
            self._abandon(t)
            self._report(offer.transfer, m.version, "failed", "the assembled file does not match sha256", previous, 0)
            return
        bundle = self.directory / f"{offer.key}.bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        bundle.mkdir()
        try:
            (bundle / "manifest.json").write_bytes(m.manifest)
            (bundle / "signature.json").write_bytes(m.signature)
            os.replace(t.part_path, bundle / offer.manifest.model_file)
            self.store.install(bundle, activate=True)
        except HealthCheckError as exc:
            outcome = "rolled_back" if previous else "failed"
            self._done(offer, previous, outcome, str(exc), t0)
        except (EdgeRuntimeError, OSError) as exc:
            self._done(offer, previous, "failed", str(exc), t0)
        else:
            self._done(offer, previous, "installed", "", t0)
            self._on_installed()
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
            self.state.end_transfer(offer.key)
            t.part_path.unlink(missing_ok=True)

    def _done(self, offer: Offer, previous: int, outcome: str, reason: str, t0: float) -> None:
        if outcome != "installed":
            self._failed.add(offer.key)  # not again in this process: the retained manifest comes back on reconnect
        active = self.store.active_version(offer.model) or 0
        ms = int((time.monotonic() - t0) * 1000)
        log.log(logging.INFO if outcome == "installed" else logging.WARNING, "%s: %s %s", offer.key, outcome, reason)
        self._report(offer.transfer, offer.message.version, outcome, reason, active, ms)

    def _report(self, transfer: str, version: int, outcome: str, reason: str, active: int, ms: int) -> None:
        self.last_reports[transfer] = {"version": version, "outcome": outcome, "reason": reason, "active": active}
        self._send(InstallReport(transfer, version, outcome, reason[:4000], active, ms), transfer)

    # --- timers -----------------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Choose among settled offers, re-request unanswered chunks, retry deferred downloads."""
        now = time.monotonic()
        for model, deadline in list(self._settle.items()):
            if now >= deadline:
                del self._settle[model]
                self._choose(model)
        for t in list(self.transfers.values()):
            stale = [i for i, at in t.in_flight.items() if now - at >= CHUNK_TIMEOUT_S]
            for i in stale:
                del t.in_flight[i]
            if stale or not t.in_flight:
                self._pump(t)

    def resend_all(self) -> None:
        """After a reconnect, requests made before it may be lost: ask again for everything in flight."""
        for t in list(self.transfers.values()):
            t.in_flight.clear()
            self._pump(t)

    def status(self) -> list[dict[str, Any]]:
        """Downloads in progress (or deferred by the policy)."""
        out = []
        for t in list(self.transfers.values()):  # called from other threads: iterate a copy
            m = t.offer.message
            out.append(
                {
                    "model": t.offer.model,
                    "version": m.version,
                    "variant": t.offer.variant,
                    "chunks_received": len(t.received),
                    "chunks": m.chunk_count,
                    "bytes": m.size,
                    "bad_chunks": t.bad_chunks,
                    "deferred": t.deferred,
                }
            )
        return out
