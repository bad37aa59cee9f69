"""The download policy (``[sync.download]``): metered links, allowed hours in a timezone, a daily byte budget."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo


class DownloadGate:
    """Decides whether the next model chunk may be fetched now. ``clock`` returns epoch seconds."""

    def __init__(self, policy: Any, bytes_on: Callable[[str], int], *, clock: Callable[[], float]) -> None:
        self.policy = policy
        self._bytes_on = bytes_on
        self._clock = clock
        self._tz = ZoneInfo(policy.timezone)

    def now(self) -> _dt.datetime:
        """Now, in the policy's timezone."""
        return _dt.datetime.fromtimestamp(self._clock(), tz=self._tz)

    def day(self) -> str:
        """Today's date in the policy's timezone (the budget's key)."""
        return self.now().date().isoformat()

    def blocked(self, nbytes: int, in_flight: int = 0) -> str | None:
        """Why fetching ``nbytes`` more (with ``in_flight`` bytes already requested) is not allowed now, or None."""
        p = self.policy
        if p.metered and not p.allow_metered:
            return "the link is metered and sync.download.allow_metered is false"
        if p.allowed_hours is not None:
            start, end = p.allowed_hours
            hour = self.now().hour
            inside = start <= hour < end if start < end else (hour >= start or hour < end)
            if not inside:
                return f"outside the allowed hours {start:02d}:00-{end:02d}:00 {p.timezone}"
        if p.max_bytes_per_day is not None:
            used = self._bytes_on(self.day())
            if used + in_flight + nbytes > p.max_bytes_per_day:
                return f"daily download budget reached ({used} of {p.max_bytes_per_day} bytes used today)"
        return None
