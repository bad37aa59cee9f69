"""A broker the simulator did not start, described by the JSON credentials file ``cloud-sync broker`` writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ._errors import FleetError


@dataclass(frozen=True)
class _Config:
    prefix: str


class ExternalBroker:
    """The parts of :class:`~cloud_sync.broker.Mosquitto` the fleet uses, read from a credentials file
    (``url``, ``prefix``, ``ca_file``, ``users``). It cannot be restarted and cannot create users: every device
    of the fleet must be a user in the file (``cloud-sync broker --device dev-0000 --device ...``)."""

    def __init__(self, credentials_file: str | Path) -> None:
        self.path = Path(credentials_file)
        try:
            info = json.loads(self.path.read_text())
            self.url: str = info["url"]
            self._users: dict[str, str] = dict(info["users"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FleetError(
                f"{self.path}: not a broker credentials file (JSON with url and users, as cloud-sync broker "
                f"writes): {exc}"
            ) from exc
        self.config = _Config(info.get("prefix") or "edge")
        self.ca_file = Path(info["ca_file"]) if info.get("ca_file") else None
        self.pid: int | None = None

    @property
    def credentials(self) -> dict[str, str]:
        """Every user's password."""
        return dict(self._users)

    def password(self, username: str) -> str:
        """The password of ``username``; FleetError naming the file when the user is missing."""
        try:
            return self._users[username]
        except KeyError:
            raise FleetError(
                f"{self.path} has no user {username!r}: start the broker with a user per simulated device"
            ) from None

    def write_credentials_file(self, path: str | Path | None = None) -> Path:
        """The credentials file itself (the publisher reads it)."""
        return self.path

    def add_device(self, device_id: str) -> str:
        """External brokers cannot create users here."""
        raise FleetError(f"cannot add {device_id!r} to an external broker; add the user there and pass a new file")
