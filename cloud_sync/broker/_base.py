"""What every broker this package starts has in common."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class BrokerHandle(Protocol):
    """A running (or stopped) local broker: where to connect and how to stop it.

    Implemented by :class:`~cloud_sync.broker.Mosquitto` and :class:`~cloud_sync.broker.EmbeddedBroker`; the
    demo takes either.
    """

    @property
    def host(self) -> str:
        """Host (or Unix socket path) to connect to."""
        ...

    @property
    def url(self) -> str:
        """``mqtt://``, ``mqtts://`` or ``unix://`` URL of the listener."""
        ...

    @property
    def running(self) -> bool:
        """True while the broker serves."""
        ...

    @property
    def transport(self) -> str:
        """paho's ``transport``: ``"tcp"`` or ``"unix"``."""
        ...

    #: TCP port (0 for a Unix socket).
    port: int

    def start(self) -> BrokerHandle:
        """Start serving (no-op when running); returns self."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving."""
        ...

    def close(self) -> None:
        """Stop and release everything the broker created."""
        ...
