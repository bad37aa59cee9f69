"""Worker processes that host simulated devices (``python -m cloud_sync.fleet._worker``).

Why processes at all: paho-mqtt's network loop uses ``select()``, which cannot watch a file descriptor >= 1024,
and one device (runtime + agent) holds ~16 descriptors, so one process cannot host more than ~60 devices. The
simulator therefore puts devices in shards of :data:`DEVICES_PER_PROCESS`; a device that must be killable with
SIGKILL gets a worker of its own. The protocol is one JSON object per line each way (see ``_worker``).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ._errors import FleetError

#: Devices per worker process: ~16 descriptors each keeps every socket well under select()'s 1024 limit.
DEVICES_PER_PROCESS = 32
RPC_TIMEOUT = 60.0


class WorkerProcess:
    """One worker process and a request/response channel to it (thread-safe; one request at a time)."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._replies: queue.Queue[str] = queue.Queue()

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Spawn the worker and wait until it is ready (imports done)."""
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # stdin closing (the simulator stopped or died) makes the worker close its devices and exit.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_sync.fleet._worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._replies = queue.Queue()
        proc = self._proc
        replies = self._replies

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                replies.put(line)
            replies.put("")  # EOF: the worker is gone

        threading.Thread(target=pump, name=f"fleet-{self.name}-rx", daemon=True).start()
        self.request({"op": "ping"}, timeout=RPC_TIMEOUT)

    def request(self, message: dict[str, Any], timeout: float = RPC_TIMEOUT) -> Any:
        """Send one request and return its result; FleetError with the worker's message when it failed."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None or proc.stdin is None:
                raise FleetError(f"worker {self.name} is not running (log: {self.log_path})")
            try:
                proc.stdin.write(json.dumps(message) + "\n")
                proc.stdin.flush()
            except OSError as exc:
                raise FleetError(f"worker {self.name} died (log: {self.log_path})") from exc
            try:
                line = self._replies.get(timeout=timeout)
            except queue.Empty:
                # A late answer would be read as the answer to the next request: this worker is unusable now.
                self._kill_locked()
                raise FleetError(
                    f"worker {self.name} did not answer {message.get('op')} within {timeout:g} s; killed it "
                    f"(log: {self.log_path})"
                ) from None
        if not line:
            raise FleetError(f"worker {self.name} exited (log: {self.log_path}):\n{self.log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise FleetError(f"worker {self.name}: {message.get('op')} failed: {reply.get('error')}")
        return reply.get("result")

    def stop(self, timeout: float = 20.0) -> None:
        """Close stdin (the worker stops its devices cleanly and exits); SIGKILL after ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                    proc.wait(timeout)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the worker and every device in it."""
        with self._lock:
            self._kill_locked()

    def _kill_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def log_tail(self, size: int = 2000) -> str:
        """The end of the worker's stderr log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float) -> bool:
        """Whether the process exited within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.running
