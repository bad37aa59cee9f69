"""The fleet ledger: what each device reported (models, watermarks, status, last seen) beside what it should
have (desired model versions from releases, stream heads from the delta log), and stored telemetry."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_sync.protocol import Ack, Hello, InstallReport, Status, TelemetryBatch
from edge_runtime._sqlite import transaction
from edge_runtime._time import now_us

from ._db import BROADCAST

_SEEN = (
    "INSERT INTO devices (device, last_event, first_seen_us, last_seen_us) VALUES (?,?,?,?) "
    "ON CONFLICT (device) DO UPDATE SET last_event = excluded.last_event, last_seen_us = excluded.last_seen_us"
)
_WATERMARK = (
    "INSERT INTO device_streams (device, stream, epoch, applied, status, updated_us) VALUES (?,?,?,?,?,?) "
    "ON CONFLICT (device, stream) DO UPDATE SET epoch = excluded.epoch, applied = excluded.applied, "
    "status = excluded.status, updated_us = excluded.updated_us"
)


@dataclass(frozen=True)
class DeviceState:
    """One row of ``cloud-sync fleet status``: desired vs reported state of a device."""

    device: str
    state: str | None
    last_seen_us: int
    last_event: str | None
    agent: str | None
    models_reported: Mapping[str, int]
    models_desired: Mapping[str, int]
    streams_reported: Mapping[str, tuple[int, int]]
    streams_desired: Mapping[str, tuple[int, int]]
    last_install: str | None = None
    detail: str | None = None
    behind: tuple[str, ...] = field(default=())

    @property
    def in_sync(self) -> bool:
        """True when every desired model version and stream head is what the device reported."""
        return not self.behind

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "device": self.device,
            "state": self.state,
            "last_seen_us": self.last_seen_us,
            "last_event": self.last_event,
            "agent": self.agent,
            "models": {"reported": dict(self.models_reported), "desired": dict(self.models_desired)},
            "streams": {
                "reported": {k: list(v) for k, v in self.streams_reported.items()},
                "desired": {k: list(v) for k, v in self.streams_desired.items()},
            },
            "last_install": self.last_install,
            "detail": self.detail,
            "in_sync": self.in_sync,
            "behind": list(self.behind),
        }


class Ledger:
    """Updates and queries of the fleet ledger tables (writes on the thread that owns the connection)."""

    def __init__(self, conn: sqlite3.Connection, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.clock = clock

    def is_known(self, device: str) -> bool:
        """Whether ``device`` has ever been seen."""
        return self.conn.execute("SELECT 1 FROM devices WHERE device = ?", (device,)).fetchone() is not None

    def devices(self) -> list[str]:
        """Every device seen so far."""
        return [r[0] for r in self.conn.execute("SELECT device FROM devices ORDER BY device")]

    def seen(self, device: str, event: str) -> None:
        """Record that ``device`` sent something (``event``: the message type)."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(_SEEN, (device, event, now, now))

    def on_hello(self, device: str, hello: Hello) -> None:
        """A device (re)connected: its agent, models and every watermark."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(_SEEN, (device, "hello", now, now))
            self.conn.execute(
                "UPDATE devices SET state = 'online', agent = ?, protocol = ?, models = ? WHERE device = ?",
                (hello.agent_version, hello.protocol_version, json.dumps(dict(hello.models)), device),
            )
            self.conn.executemany(
                _WATERMARK, [(device, s, e, a, "hello", now) for s, (e, a) in hello.watermarks.items()]
            )

    def on_status(self, device: str, status: Status, *, retained: bool, sent_at_us: int = 0) -> None:
        """Status or last will: online/offline and the models it runs. A retained status is delivered again on
        every subscribe, so it moves ``last_seen`` only up to the time it was sent."""
        now = now_us(self.clock)
        seen = min(sent_at_us, now) if retained and sent_at_us else now
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO devices (device, last_event, first_seen_us, last_seen_us) VALUES (?,?,?,?) "
                "ON CONFLICT (device) DO UPDATE SET last_event = excluded.last_event, "
                "last_seen_us = max(last_seen_us, excluded.last_seen_us)",
                (device, f"status:{status.state}", seen, seen),
            )
            self.conn.execute(
                "UPDATE devices SET state = ?, detail = ? WHERE device = ?", (status.state, status.detail, device)
            )
            if status.models:
                self.conn.execute(
                    "UPDATE devices SET models = ?, agent = coalesce(nullif(?, ''), agent) WHERE device = ?",
                    (json.dumps(dict(status.models)), status.agent_version, device),
                )

    def on_ack(self, device: str, ack: Ack) -> None:
        """A feature batch was committed (or was a duplicate/rejected): the device's watermark now."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(_SEEN, (device, "ack", now, now))
            self.conn.execute(_WATERMARK, (device, ack.stream, ack.epoch, ack.applied_seq, ack.status, now))

    def on_install_report(self, device: str, model: str, report: InstallReport) -> None:
        """An install outcome: the active version of ``model`` and what happened."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(_SEEN, (device, f"install:{report.outcome}", now, now))
            row = self.conn.execute("SELECT models FROM devices WHERE device = ?", (device,)).fetchone()
            models = json.loads(row[0]) if row and row[0] else {}
            if report.active_version:
                models[model] = report.active_version
            detail = f"{report.model} v{report.version} {report.outcome}"
            if report.reason:
                detail += f": {report.reason}"
            self.conn.execute(
                "UPDATE devices SET models = ?, detail = ? WHERE device = ?", (json.dumps(models), detail, device)
            )

    def on_telemetry(self, device: str, batch: TelemetryBatch) -> int:
        """Store the records not stored yet (dedup by record id); return how many were new."""
        now = now_us(self.clock)
        with transaction(self.conn):
            self.conn.execute(_SEEN, (device, "telemetry", now, now))
            before = self.conn.total_changes
            self.conn.executemany(
                "INSERT OR IGNORE INTO telemetry (id, device, kind, at_us, payload, received_us) VALUES (?,?,?,?,?,?)",
                [(r.id, device, r.kind, r.at, json.dumps(dict(r.values)), now) for r in batch.records],
            )
            return self.conn.total_changes - before

    # --- queries ----------------------------------------------------------------------------------------------

    def status(self) -> list[DeviceState]:
        """Desired vs reported state of every device, sorted by id."""
        heads: dict[str, dict[str, tuple[int, int]]] = {}
        for target, stream, epoch, seq in self.conn.execute("SELECT target, stream, epoch, last_seq FROM heads"):
            heads.setdefault(target, {})[stream] = (epoch, seq)
        reported: dict[str, dict[str, tuple[int, int]]] = {}
        for device, stream, epoch, applied in self.conn.execute(
            "SELECT device, stream, epoch, applied FROM device_streams"
        ):
            reported.setdefault(device, {})[stream] = (epoch, applied)
        desired_models: dict[str, dict[str, int]] = {}
        last_install: dict[str, str] = {}
        for device, model, version, state, outcome in self.conn.execute(
            "SELECT t.device, r.model, r.version, r.state, t.outcome FROM release_targets t "
            "JOIN releases r ON r.id = t.release_id ORDER BY r.id"
        ):
            if state != "halted" or outcome == "installed":
                mine = desired_models.setdefault(device, {})
                mine[model] = max(mine.get(model, 0), version)
            if outcome:
                last_install[device] = f"{model} v{version} {outcome}"
        broadcast_models: dict[str, int] = {}
        for model, version in self.conn.execute(
            "SELECT model, max(version) FROM releases WHERE scope = 'all' AND state != 'halted' GROUP BY model"
        ):
            broadcast_models[model] = version
        out = []
        for device, state, agent, models, detail, last_event, last_seen in self.conn.execute(
            "SELECT device, state, agent, models, detail, last_event, last_seen_us FROM devices ORDER BY device"
        ):
            want_models = dict(broadcast_models)
            for model, version in desired_models.get(device, {}).items():
                want_models[model] = max(want_models.get(model, 0), version)
            want_streams = {**heads.get(BROADCAST, {}), **heads.get(device, {})}
            have_models = {str(k): int(v) for k, v in json.loads(models or "{}").items()}
            have_streams = reported.get(device, {})
            behind = [f"{m}<v{v}" for m, v in sorted(want_models.items()) if have_models.get(m, 0) < v]
            behind += [s for s, head in sorted(want_streams.items()) if have_streams.get(s) != head]
            out.append(
                DeviceState(
                    device,
                    state,
                    last_seen,
                    last_event,
                    agent,
                    have_models,
                    want_models,
                    have_streams,
                    want_streams,
                    last_install.get(device),
                    detail,
                    tuple(behind),
                )
            )
        return out

    def telemetry_count(self, device: str | None = None) -> int:
        """Stored telemetry records (of one device, or all)."""
        if device is None:
            return int(self.conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])
        return int(self.conn.execute("SELECT count(*) FROM telemetry WHERE device = ?", (device,)).fetchone()[0])
