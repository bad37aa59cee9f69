"""Convergence: which devices hold what the cloud wants them to hold, and how that evolved over time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConditionTimeout

_LISTED = 8
#: The fractions of devices whose convergence time the table reports.
MILESTONES = (0.5, 0.99, 1.0)


@dataclass(frozen=True)
class Convergence:
    """One look at the fleet: ``converged`` of ``total`` devices counted; ``behind`` says why the others are not."""

    total: int
    converged: int
    behind: Mapping[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """Every counted device converged."""
        return self.converged == self.total

    @property
    def fraction(self) -> float:
        """Converged share of the counted devices (1.0 when none are counted)."""
        return self.converged / self.total if self.total else 1.0

    def describe(self) -> str:
        """A few lines for a failure message: the counts and why the first devices are behind."""
        lines = [f"{self.converged}/{self.total} devices converged"]
        if self.skipped:
            lines[0] += f" ({len(self.skipped)} offline devices not counted)"
        for device, why in list(self.behind.items())[:_LISTED]:
            lines.append(f"  {device}: {why}")
        if len(self.behind) > _LISTED:
            lines.append(f"  ... and {len(self.behind) - _LISTED} more")
        return "\n".join(lines)


def device_behind(
    probe: Mapping[str, Any], want_models: Mapping[str, int], want_streams: Mapping[str, tuple[int, int]] | None
) -> str | None:
    """Why a device (its probe) is not converged, or None when it is. ``want_streams`` None: not known to the cloud."""
    if not probe.get("running", True):
        return "not running"
    reasons = []
    models = probe.get("models", {})
    for name, version in sorted(want_models.items()):
        have = models.get(name)
        if have is None or have < version:
            reasons.append(f"model {name} v{have} < v{version}")
    if want_streams is None:
        reasons.append("never reported to the cloud")
    else:
        marks = probe.get("watermarks", {})
        for stream, head in sorted(want_streams.items()):
            have_wm = marks.get(stream)
            if have_wm is None or tuple(have_wm) != tuple(head):
                reasons.append(f"stream {stream} at {tuple(have_wm) if have_wm else None}, cloud head {tuple(head)}")
    if reasons and not probe.get("connected", False):
        reasons.append("disconnected")
    return "; ".join(reasons) or None


@dataclass
class Timeline:
    """Convergence over time: ``samples`` of (seconds since start, converged fraction), and when milestones fell."""

    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, float]] = field(default_factory=list)
    reached: dict[float, float] = field(default_factory=dict)
    last: Convergence | None = None

    def add(self, c: Convergence) -> None:
        """Record one look."""
        t = time.monotonic() - self.started
        self.samples.append((t, c.fraction))
        self.last = c
        for m in MILESTONES:
            if m not in self.reached and c.fraction >= m:
                self.reached[m] = t

    def table(self) -> list[dict[str, Any]]:
        """Rows for the convergence table: milestone, devices, seconds (None = not reached)."""
        total = self.last.total if self.last else 0
        rows = []
        for m in MILESTONES:
            rows.append(
                {
                    "converged": f"{m:.0%}" if m < 1 else "all",
                    "devices": max(1, math.ceil(m * total - 1e-9)) if total else 0,
                    "seconds": round(self.reached[m], 2) if m in self.reached else None,
                }
            )
        return rows


def track(
    look: Callable[[], Convergence],
    timeout: float,
    *,
    interval: float = 0.2,
    on_sample: Callable[[Convergence, float], None] | None = None,
    what: str = "the fleet to converge",
    raise_on_timeout: bool = True,
    since: float | None = None,
) -> Timeline:
    """Poll ``look`` until every counted device converged; returns the timeline.

    After ``timeout`` seconds raises :class:`ConditionTimeout` with the last look's description (or, with
    ``raise_on_timeout=False``, returns the incomplete timeline). ``since`` (a ``time.monotonic()`` value, default
    now) is time zero of the timeline, e.g. when the change was published.
    """
    timeline = Timeline() if since is None else Timeline(started=since)
    deadline = time.monotonic() + timeout
    while True:
        c = look()
        timeline.add(c)
        if on_sample is not None:
            on_sample(c, time.monotonic() - timeline.started)
        if c.done:
            return timeline
        if time.monotonic() >= deadline:
            if raise_on_timeout:
                raise ConditionTimeout(what, timeout, c.describe())
            return timeline
        time.sleep(interval)
