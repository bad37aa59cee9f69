"""One sync agent per data directory: a second one refuses to start instead of stealing the MQTT session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _agent_support import make_device

from cloud_sync import AgentLockedError, CloudSyncError

pytestmark = pytest.mark.timeout(60)

_HOLD = """
import sys, time
from cloud_sync.agent._lock import AgentLock
AgentLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(data_dir: Path) -> subprocess.Popen[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_agent_in_process_refuses_until_the_first_stops(tmp_path: Path, mosquitto: Any) -> None:
    first = make_device(tmp_path / "dev", mosquitto)
    second = make_device(tmp_path / "dev", mosquitto, start=False)
    try:
        with pytest.raises(AgentLockedError) as err:
            second.agent.start()
        assert isinstance(err.value, CloudSyncError)
        lock = tmp_path / "dev" / "sync" / "sync-agent.lock"
        assert err.value.pid == os.getpid() and err.value.path == str(lock)
        assert str(os.getpid()) in str(err.value) and str(lock) in str(err.value)
        first.agent.stop()
        second.agent.start()  # the lock was released on stop
        assert second.agent._worker is not None
    finally:
        second.close()
        first.close()


def test_agent_refuses_while_another_process_holds_the_lock_and_not_after_it_died(
    tmp_path: Path, mosquitto: Any
) -> None:
    proc = _holder(tmp_path / "dev" / "sync")
    dev = make_device(tmp_path / "dev", mosquitto, start=False)
    try:
        with pytest.raises(AgentLockedError) as err:
            dev.agent.start()
        assert err.value.pid == proc.pid and str(proc.pid) in str(err.value)
        os.kill(proc.pid, signal.SIGKILL)  # the lock file stays behind, with the dead process's pid in it
        proc.wait(10)
        assert (tmp_path / "dev" / "sync" / "sync-agent.lock").read_text().strip() == str(proc.pid)
        dev.agent.start()  # a stale lock file does not block: the OS released the flock
        time.sleep(0.1)
        assert dev.agent._worker is not None
        assert (tmp_path / "dev" / "sync" / "sync-agent.lock").read_text().strip() == str(os.getpid())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        dev.close()


def test_a_runtime_whose_agent_is_refused_closes_what_it_opened(tmp_path: Path) -> None:
    """An app's runtime and a `cloud-sync agent` on one profile: the second runtime to start fails cleanly."""
    import threading

    from edge_runtime import EdgeRuntime, RuntimeConfig, SyncSettings

    config = RuntimeConfig(
        data_dir=tmp_path / "data", sync=SyncSettings(broker_url="mqtt://127.0.0.1:1", device_id="dev-a")
    )
    first = EdgeRuntime(config)
    try:
        before = {t.name for t in threading.enumerate()}
        with pytest.raises(AgentLockedError) as exc:
            EdgeRuntime(config)
        assert exc.value.pid == os.getpid()
        time.sleep(0.2)
        assert {t.name for t in threading.enumerate()} <= before, "the refused runtime left no thread behind"
        assert first.status()["sync"] is not None, "the first runtime's agent keeps running"
    finally:
        first.close()
    with EdgeRuntime(config) as again:  # the lock went with the first runtime
        assert again.agent is not None
