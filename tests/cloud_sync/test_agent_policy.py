"""The download policy gate: metered links, allowed hours in a timezone (wrapping midnight), daily budgets."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from cloud_sync.agent._policy import DownloadGate
from edge_runtime import DownloadPolicy


def _at(hour: int, tz: str = "UTC") -> float:
    return dt.datetime(2026, 3, 10, hour, 30, tzinfo=ZoneInfo(tz)).timestamp()


def test_metered_link_blocks_unless_allowed() -> None:
    used = lambda day: 0  # noqa: E731
    assert "metered" in (DownloadGate(DownloadPolicy(metered=True), used, clock=lambda: 0.0).blocked(1) or "")
    assert DownloadGate(DownloadPolicy(metered=True, allow_metered=True), used, clock=lambda: 0.0).blocked(1) is None


@pytest.mark.parametrize(
    ("hours", "hour", "allowed"),
    [
        ((1, 5), 0, False),
        ((1, 5), 1, True),
        ((1, 5), 4, True),
        ((1, 5), 5, False),
        ((22, 3), 23, True),
        ((22, 3), 2, True),
        ((22, 3), 3, False),
        ((22, 3), 12, False),
    ],
)
def test_allowed_hours_are_read_in_the_policy_timezone(hours: tuple[int, int], hour: int, allowed: bool) -> None:
    policy = DownloadPolicy(allowed_hours=hours, timezone="Asia/Tokyo")
    gate = DownloadGate(policy, lambda day: 0, clock=lambda: _at(hour, "Asia/Tokyo"))
    assert (gate.blocked(1) is None) is allowed


def test_daily_budget_counts_bytes_per_local_day() -> None:
    used = {"2026-03-10": 900}
    gate = DownloadGate(
        DownloadPolicy(max_bytes_per_day=1000, timezone="Europe/Berlin"),
        lambda day: used.get(day, 0),
        clock=lambda: _at(12, "Europe/Berlin"),
    )
    assert gate.day() == "2026-03-10"
    assert gate.blocked(100) is None
    assert "budget" in (gate.blocked(100, in_flight=50) or "")
    assert "budget" in (gate.blocked(101) or "")
