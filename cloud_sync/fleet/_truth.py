"""The simulator's own record of what the cloud published, to check every device's rows against, row by row.

Kept independently of the publisher's state tables on purpose: a bug in the publisher's bookkeeping must show up
as a mismatch, not be copied into the expectation. Rules (docs/sync-protocol.md): a snapshot replaces a device's
rows of the view, a delta upserts where the event time is not older than what is stored, a tombstone deletes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import FleetError

BROADCAST = "*"
_MAX_LISTED = 5


@dataclass
class RowDiff:
    """How one device's rows of one view differ from the truth."""

    device: str
    view: str
    missing: list[tuple[Any, ...]] = field(default_factory=list)
    extra: list[tuple[Any, ...]] = field(default_factory=list)
    different: list[tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    duplicated: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the device holds exactly the truth."""
        return not (self.missing or self.extra or self.different or self.duplicated)

    def __str__(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("extra", self.extra), ("duplicated", self.duplicated)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {items[:_MAX_LISTED]})")
        if self.different:
            key, want, got = self.different[0]
            parts.append(f"{len(self.different)} different (e.g. {key}: cloud {want} != device {got})")
        return f"{self.device}/{self.view}: " + ("; ".join(parts) or "ok")


class Truth:
    """Expected rows per (view, target), target a device id or ``"*"`` for a fleet-wide stream."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, dict[tuple[Any, ...], tuple[float, dict[str, Any]]]]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._broadcast: dict[str, bool] = {}

    def views(self) -> list[str]:
        """Views with recorded truth."""
        return sorted(self._rows)

    def record(
        self,
        view: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        join_keys: Iterable[str],
        kind: str,
        route: str | None,
        tombstones: Iterable[Mapping[str, Any]] = (),
        timestamp_column: str | None = "event_timestamp",
    ) -> None:
        """Apply one publish: ``route`` is the row column naming the device, or None for a broadcast."""
        keys = tuple(join_keys)
        self._keys[view] = keys
        self._broadcast[view] = route is None
        targets = self._rows.setdefault(view, {})
        rows = list(rows)
        if kind == "snapshot":
            touched = {BROADCAST} if route is None else {str(r[route]) for r in rows}
            for t in touched:
                targets[t] = {}
        for row in rows:
            target = BROADCAST if route is None else str(row[route])
            key = tuple(row[k] for k in keys)
            ts = float(row[timestamp_column]) if timestamp_column and timestamp_column in row else 0.0
            store = targets.setdefault(target, {})
            old = store.get(key)
            if old is None or ts >= old[0]:
                skip = {route, timestamp_column}
                store[key] = (ts, {k: v for k, v in row.items() if k not in skip and k not in keys})
        for row in tombstones:
            target = BROADCAST if route is None else str(row[route])
            targets.setdefault(target, {}).pop(tuple(row[k] for k in keys), None)

    def expected(self, view: str, device: str) -> dict[tuple[Any, ...], dict[str, Any]]:
        """``{join key tuple: features}`` that ``device`` should hold in ``view``."""
        if view not in self._rows:
            raise FleetError(f"no truth recorded for view {view!r}; known: {', '.join(self.views()) or 'none'}")
        target = BROADCAST if self._broadcast[view] else device
        return {k: v for k, (_ts, v) in self._rows[view].get(target, {}).items()}

    def compare(self, view: str, device: str, rows: list[dict[str, Any]]) -> RowDiff:
        """Compare a device's rows (join keys + features) with the truth."""
        keys = self._keys[view]
        want = self.expected(view, device)
        diff = RowDiff(device, view)
        got: dict[tuple[Any, ...], dict[str, Any]] = {}
        for row in rows:
            key = tuple(row[k] for k in keys)
            if key in got:
                diff.duplicated.append(key)
            got[key] = {k: v for k, v in row.items() if k not in keys}
        for key, features in want.items():
            have = got.get(key)
            if have is None:
                diff.missing.append(key)
            elif any(not _same(v, have.get(k)) for k, v in features.items()):
                diff.different.append((key, features, have))
        diff.extra = [k for k in got if k not in want]
        return diff


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return False
    return bool(a == b)
