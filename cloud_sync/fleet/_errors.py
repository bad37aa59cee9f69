"""Errors of the fleet simulator (all :class:`~cloud_sync.CloudSyncError`)."""

from __future__ import annotations

from cloud_sync._errors import CloudSyncError


class FleetError(CloudSyncError):
    """The fleet simulator cannot do what was asked: an unknown device, a bad option, a device that died."""


class ConditionTimeout(FleetError, AssertionError):
    """A condition did not hold within its timeout. ``what`` names the condition, ``detail`` is the last state seen.

    Also an ``AssertionError``, so a failing ``fleet.wait_until`` reads as a test failure in pytest.
    """

    def __init__(self, what: str, timeout: float, detail: str = "") -> None:
        self.what = what
        self.timeout = timeout
        self.detail = detail
        text = f"timed out after {timeout:g} s waiting for {what}"
        if detail:
            text += f"\n{detail}"
        super().__init__(text)
