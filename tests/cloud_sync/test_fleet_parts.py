"""The simulator's parts that need no broker: wait_until, SkewedClock, the truth model, specs, worker processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_sync import CloudSyncError
from cloud_sync.fleet import ConditionTimeout, DeviceSpec, FleetError, SkewedClock, Truth, wait_until
from cloud_sync.fleet._converge import Convergence, Timeline, device_behind
from cloud_sync.fleet._host import WorkerProcess

pytestmark = pytest.mark.timeout(60)


def test_wait_until_returns_elapsed_and_accepts_detail_tuples() -> None:
    start = time.monotonic()
    calls = []

    def cond() -> Any:
        calls.append(1)
        return (len(calls) >= 3, f"{len(calls)} calls")

    took = wait_until(cond, 5)
    assert len(calls) == 3 and 0 <= took <= time.monotonic() - start


def test_wait_until_timeout_names_the_condition_and_last_detail() -> None:
    def every_device_on_v3() -> Any:
        """every device runs v3"""
        return False, "dev-7 runs v2"

    with pytest.raises(ConditionTimeout) as info:
        wait_until(every_device_on_v3, 0.1)
    text = str(info.value)
    assert "every device runs v3" in text and "dev-7 runs v2" in text and "0.1 s" in text
    assert isinstance(info.value, AssertionError) and isinstance(info.value, CloudSyncError)


def test_wait_until_reports_exceptions_and_describe() -> None:
    def boom() -> bool:
        raise RuntimeError("store closed")

    with pytest.raises(ConditionTimeout, match="RuntimeError: store closed"):
        wait_until(boom, 0.05, what="rows")
    with pytest.raises(ConditionTimeout, match="7 of 9 behind"):
        wait_until(lambda: False, 0.05, describe=lambda: "7 of 9 behind")
    with pytest.raises(ValueError):
        wait_until(lambda: True, 0)


def test_skewed_clock_follows_time_with_an_offset() -> None:
    base = [1000.0]
    clock = SkewedClock(5, base=lambda: base[0])
    assert clock() == 1005.0
    clock.skew(-3600)
    base[0] = 2000.0
    assert clock() == 2000.0 - 3600
    assert "-3600" in repr(clock)


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = DeviceSpec(
        device_id="dev-1",
        data_dir=tmp_path / "d",
        broker_url="mqtt://127.0.0.1:1",
        username="dev-1",
        password="pw",
        trusted_keys=(tmp_path / "k.pub",),
        clock_offset_s=7.5,
    )
    again = DeviceSpec.from_json(spec.to_json())
    assert again == spec
    assert "pw" not in repr(spec)
    config = spec.runtime_config()
    assert config.sync.device_id == "dev-1" and config.data_dir == tmp_path / "d"


def test_truth_snapshot_delta_tombstone_and_event_time_order() -> None:
    t = Truth()
    rows = [{"k": i, "v": float(i), "event_timestamp": 10.0, "device_id": "a"} for i in range(3)]
    t.record("view", rows, join_keys=["k"], kind="snapshot", route="device_id")
    t.record(
        "view",
        [{"k": 1, "v": 9.0, "event_timestamp": 5.0, "device_id": "a"}],  # older: must not win
        join_keys=["k"],
        kind="delta",
        route="device_id",
        tombstones=[{"k": 2, "device_id": "a"}],
    )
    assert t.expected("view", "a") == {(0,): {"v": 0.0}, (1,): {"v": 1.0}}
    diff = t.compare("view", "a", [{"k": 0, "v": 0.0}, {"k": 1, "v": 2.0}, {"k": 1, "v": 2.0}, {"k": 5, "v": 1.0}])
    assert not diff.ok
    assert diff.duplicated == [(1,)] and diff.extra == [(5,)] and diff.different[0][0] == (1,)
    assert "1 duplicated" in str(diff) and "cloud {'v': 1.0} != device {'v': 2.0}" in str(diff)
    assert t.expected("view", "other") == {}
    with pytest.raises(FleetError, match="no truth recorded for view 'nope'"):
        t.expected("nope", "a")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 20), st.floats(-1e6, 1e6, allow_nan=False)), max_size=15),
        min_size=1,
        max_size=6,
    )
)
def test_truth_last_write_wins_matches_a_dict(batches: list[list[tuple[int, float]]]) -> None:
    t = Truth()
    model: dict[tuple[int], dict[str, float]] = {}
    for ts, batch in enumerate(batches):
        rows = [{"k": k, "v": v, "event_timestamp": float(ts)} for k, v in batch]
        t.record("v", rows, join_keys=["k"], kind="delta", route=None)
        for k, v in batch:
            model[(k,)] = {"v": v}
    assert t.expected("v", "any-device") == model
    assert t.compare("v", "d", [{"k": k[0], **f} for k, f in model.items()]).ok


def test_device_behind_reasons_and_convergence_table() -> None:
    probe = {"running": True, "connected": False, "models": {"m": 1}, "watermarks": {"s": [1, 3]}}
    why = device_behind(probe, {"m": 2}, {"s": (1, 4)})
    assert why is not None and "model m v1 < v2" in why and "(1, 3), cloud head (1, 4)" in why and "disconnected" in why
    assert device_behind({**probe, "models": {"m": 2}, "watermarks": {"s": [1, 4]}}, {"m": 2}, {"s": (1, 4)}) is None
    assert device_behind({"running": False}, {}, {}) == "not running"
    c = Convergence(10, 7, {f"d{i}": "behind" for i in range(3)}, ("x",))
    assert not c.done and c.fraction == 0.7 and "7/10" in c.describe() and "1 offline" in c.describe()
    tl = Timeline()
    tl.add(Convergence(200, 100))
    tl.add(Convergence(200, 200))
    rows = {r["converged"]: r for r in tl.table()}
    assert rows["50%"]["devices"] == 100 and rows["99%"]["devices"] == 198 and rows["all"]["devices"] == 200
    assert rows["all"]["seconds"] is not None


def test_worker_process_answers_and_dies_cleanly(tmp_path: Path) -> None:
    w = WorkerProcess("w", tmp_path / "w.log")
    w.start()
    try:
        assert w.request({"op": "ping"}) == w.pid
        with pytest.raises(FleetError, match="no device 'x'"):
            w.request({"op": "call", "device": "x", "method": "probe"})
        with pytest.raises(FleetError, match="unknown op"):
            w.request({"op": "nope"})
        with pytest.raises(FleetError, match="no profile running"):
            w.request({"op": "profile_stop"})
        w.request({"op": "profile_start", "interval": 0.001})
        time.sleep(0.1)
        profile = w.request({"op": "profile_stop"})
        assert profile["samples"] > 10 and isinstance(profile["counts"], dict)
        w.kill()
        assert not w.running
        with pytest.raises(FleetError, match="not running"):
            w.request({"op": "ping"})
    finally:
        w.stop()


def test_sampler_counts_busy_threads_and_skips_waiting_ones() -> None:
    import threading

    from cloud_sync.fleet._sampler import Sampler

    stop = threading.Event()

    def spin_for_the_sampler() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    idle = threading.Thread(target=stop.wait, daemon=True)
    busy = threading.Thread(target=spin_for_the_sampler, daemon=True)
    idle.start()
    busy.start()
    sampler = Sampler(0.001).start()
    time.sleep(0.2)
    sampler.stop()
    stop.set()
    busy.join()
    assert sampler.samples > 10
    assert any(name.endswith(":spin_for_the_sampler") for name in sampler.counts)
    assert not any(name.endswith(":wait") for name in sampler.counts)
