"""The data directory's exclusive agent lock: one sync agent per data directory (and so per device id).

``flock`` on ``<data_dir>/sync-agent.lock``, non-blocking, held for the agent's lifetime. The OS releases it when
the holder dies, so a lock file left by a killed process never blocks; the file holds the holder's pid for the
error message only.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cloud_sync._errors import AgentLockedError

LOCK_NAME = "sync-agent.lock"


class AgentLock:
    """The lock: :meth:`acquire` (raises :class:`AgentLockedError` when held elsewhere), :meth:`release`."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            raise AgentLockedError(path=str(self.path), pid=int(text) if text.isdigit() else None) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
