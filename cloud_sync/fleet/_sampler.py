"""A sampling profiler over every thread of a worker process (cProfile sees only the thread that enabled it).

Every ``interval`` seconds it looks at each thread's innermost Python frame and counts ``file:function`` — time in
C (SQLite, onnxruntime, zlib, hashing) is charged to the Python function that called it. Threads parked in a
known wait (a queue, a condition, paho's select, the worker's stdin loop) are not counted, so the counts say where
the busy time goes. :meth:`cloud_sync.fleet.Fleet.sample_profile` runs one in every worker process.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path

#: Innermost frames that mean "waiting", not working.
IDLE = frozenset({"wait", "_wait_for_tstate_lock", "select", "_loop", "main", "readline", "sleep", "get", "run"})


class Sampler:
    """Counts busy threads' innermost frames until :meth:`stop`."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)

    def start(self) -> Sampler:
        """Start sampling in a daemon thread."""
        self._thread.start()
        return self

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.samples += 1
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                code = frame.f_code
                if code.co_name in IDLE:
                    continue
                self.counts[f"{Path(code.co_filename).parent.name}/{Path(code.co_filename).name}:{code.co_name}"] += 1

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(1.0)
