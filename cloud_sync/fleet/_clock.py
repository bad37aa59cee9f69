"""A wall clock with an adjustable offset, to simulate a device whose clock is wrong."""

from __future__ import annotations

import time
from collections.abc import Callable


class SkewedClock:
    """``time.time()`` plus an offset in seconds, changeable while the device runs (thread-safe: one float).

    Pass it as ``EdgeRuntime(clock=...)`` (feature TTLs, stream windows, cache validity) and
    ``DeviceAgent(wall_clock=...)`` (manifest expiry, download hours and budgets).
    """

    def __init__(self, offset_s: float = 0.0, *, base: Callable[[], float] = time.time) -> None:
        self.offset_s = float(offset_s)
        self._base = base

    def __call__(self) -> float:
        return self._base() + self.offset_s

    def skew(self, seconds: float) -> None:
        """Set the offset to ``seconds`` (negative: the device is behind)."""
        self.offset_s = float(seconds)

    def __repr__(self) -> str:
        return f"<SkewedClock {self.offset_s:+g} s>"
