"""Support for the model store: its SQLite schema (named migrations), version records, policy checks, pause points."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime._errors import ConfigError, ModelError
from edge_runtime._sqlite import Migration


def _initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE model_versions (
            name TEXT NOT NULL,
            version INTEGER NOT NULL,
            digest TEXT NOT NULL UNIQUE,
            format TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at TEXT NOT NULL,
            installed_at_us INTEGER NOT NULL,
            key_id TEXT,
            PRIMARY KEY (name, version)
        )"""
    )
    # One row per model: the A/B slot. Changing it is a single-row commit, so a crash leaves the old or the new pair.
    conn.execute(
        """CREATE TABLE model_slots (
            name TEXT PRIMARY KEY,
            active INTEGER,
            previous INTEGER,
            updated_at_us INTEGER NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE model_events (
            id INTEGER PRIMARY KEY,
            at_us INTEGER NOT NULL,
            name TEXT NOT NULL,
            version INTEGER,
            action TEXT NOT NULL,
            detail TEXT
        )"""
    )


MIGRATIONS = (Migration("models-0001-initial", _initial),)


#: Set to a step name (e.g. ``install:renamed``) to make the process stop there; the crash tests SIGKILL it.
PAUSE_ENV = "EDGE_RUNTIME_TEST_PAUSE_AT"

Policy = str | int


def pause_point(step: str) -> None:
    """Stop here (sleep) when :data:`PAUSE_ENV` names ``step``: the crash tests kill the process at that point."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"PAUSED {step}", file=sys.stderr, flush=True)
        time.sleep(3600)


@dataclass(frozen=True)
class ModelVersion:
    """One installed version, as :meth:`ModelStore.versions` lists it."""

    name: str
    version: int
    digest: str
    format: str
    size: int
    created_at: str
    installed_at_us: int
    key_id: str | None
    active: bool
    previous: bool

    @property
    def path_name(self) -> str:
        """The blob directory name (the bundle digest)."""
        return self.digest


def check_policy(policy: Any) -> Policy | Mapping[str, Policy]:
    """Validate a store policy: ``"latest"``, a pinned version, or a mapping of model name to either."""

    def one(value: Any, key: str) -> Policy:
        if value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ConfigError(
            "must be 'latest' or a pinned version >= 1", key=key, expected="'latest' or 1, 2, ...", got=value
        )

    if isinstance(policy, Mapping):
        return {str(k): one(v, f"policy.{k}") for k, v in policy.items()}
    return one(policy, "policy")


class WriterLock:
    """A re-entrant writer lock: a thread lock plus an advisory ``flock`` on a lock file, so the app, the CLI and
    the sync agent never install or swap in the same store at the same time. The kernel drops the file lock when
    its process dies, so a killed writer never leaves the store locked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._thread = threading.RLock()
        self._depth = 0
        self._owner: int | None = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block (nested holds by the same thread are free)."""
        with self._thread:
            if self._fd < 0:
                raise ModelError(f"{self.path.parent} is closed")
            if self._depth == 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
                self._owner = threading.get_ident()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def held_by_this_thread(self) -> bool:
        """Whether the calling thread holds the lock (a read it makes must see its own uncommitted writes)."""
        return self._owner == threading.get_ident()

    def close(self) -> None:
        """Release the lock file descriptor."""
        with self._thread:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
