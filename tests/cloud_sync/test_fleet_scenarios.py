"""Fleet scenarios with the real agent, the real publisher and a real mosquitto, through the ``fleet`` fixture.

Partitions during a rollout with feature deltas (checked row by row against the cloud's truth), kill -9 in the
middle of feature batches and of model installs, a canary that halts itself, a broker restart, clock skew.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_sync.fleet import SIM_VIEW, Fleet, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.mosquitto]

T0 = 1_700_000_000.0


def rows(device: str, ids: range | list[int], ts: float, scale: float = 1.0) -> list[dict[str, Any]]:
    """Rows of the simulated view for ``device`` (values depend on ``scale`` so updates are visible)."""
    return [
        {"entity_id": i, "value": i * scale, "count": i + int(scale), "event_timestamp": ts, "device_id": device}
        for i in ids
    ]


def _diffs(f: Fleet) -> list[str]:
    return [str(d) for d in f.check_rows()]


def test_random_partitions_during_rollout_and_deltas_converge_row_by_row(fleet: Any) -> None:
    rng = random.Random(20261121)
    f: Fleet = fleet(50)
    ids = f.ids
    f.publish_features(
        [r for k, d in enumerate(ids) for r in rows(d, range(k * 100, k * 100 + 40), T0)], kind="snapshot"
    )
    f.release(f.build_model(2))
    for step in range(8):
        f.restore()
        cut = rng.sample(ids, 12)
        f.cut(cut[:8], "reset")
        f.cut(cut[8:], "blackhole")
        ts = T0 + 10 * (step + 1)
        upserts, tombstones = [], []
        for d in rng.sample(ids, 30):
            base = ids.index(d) * 100
            upserts += rows(d, rng.sample(range(base, base + 60), 8), ts, scale=step + 2.0)
            tombstones += [{"entity_id": base + rng.randrange(40), "device_id": d}]
        f.publish_features(upserts, tombstones=tombstones)
        if step == 3:
            f.release(f.build_model(3))  # a second rollout starts while a fifth of the fleet is partitioned
        time.sleep(rng.uniform(0.1, 0.5))
    # The online part converges while partitions persist ...
    f.wait_converged(60)
    f.restore()
    # ... and everyone once they are healed: model v3, every stream at the cloud's head, rows exactly the truth.
    f.wait_converged(90, include_offline=True)
    assert f.model_targets == {"sim": 3}
    assert all(p["models"] == {"sim": 3} for p in f.probe().values())
    assert sum(len(f.truth.expected(SIM_VIEW, d)) for d in ids) > 1500  # the check below compares real data
    assert _diffs(f) == []


def _consistent_after_restart(f: Fleet, victim: str, states: list[dict[int, float]]) -> int:
    """Restart the killed device offline; its rows must be exactly the state after some prefix of the batches
    (every batch sets 2000 rows to values no other batch uses, so a torn batch cannot match). Returns the prefix."""
    f.start_device(victim)
    dev = f.device(victim)
    integrity = dev.call("check_integrity")
    assert set(integrity["databases"].values()) == {"ok"}, integrity
    got = {r["entity_id"]: r["value"] for r in dev.rows(SIM_VIEW)}
    matches = [i for i, state in enumerate(states) if state == got]
    assert matches, f"{len(got)} rows on the device match no prefix of the published batches"
    return matches[-1]


def test_kill_9_in_the_middle_of_feature_batches_leaves_the_device_consistent(fleet: Any) -> None:
    rng = random.Random(7)
    f: Fleet = fleet(3, killable=[0])
    victim = f.ids[0]
    f.publish_features(rows(victim, range(50), T0), kind="snapshot")
    state = {i: float(i) for i in range(50)}
    states = [dict(state)]  # the rows after each batch, in order
    f.wait_converged(30)
    mid_kills = 0
    for round_ in range(10):
        start = len(states) - 1

        def kill_now() -> None:
            f.kill(victim)
            f.cut(victim)  # keep it offline after the restart, so what we read is what survived the kill

        killer = threading.Timer(rng.uniform(0.02, 0.4), kill_now)
        killer.start()
        for b in range(25):
            ts = T0 + round_ * 100 + b + 1
            ids = rng.sample(range(5000), 2000)
            scale = 1000.0 + round_ * 100.0 + b
            result = f.publish_features(rows(victim, ids, ts, scale=scale), wait=False)
            assert result.targets[0].messages == 1
            state.update({i: i * scale for i in ids})
            states.append(dict(state))
        killer.join()
        prefix = _consistent_after_restart(f, victim, states)
        mid_kills += start < prefix < len(states) - 1
        f.restore(victim)
        f.wait_converged(60)
        if mid_kills >= 2:
            break
    assert mid_kills >= 1, "no kill landed in the middle of a batch train; the scenario did not test anything"
    assert _diffs(f) == []


def test_kill_9_during_a_snapshot_swap_is_all_or_nothing(fleet: Any) -> None:
    f: Fleet = fleet(2, killable=[0])
    victim = f.ids[0]
    f.publish_features(rows(victim, range(100), T0), kind="snapshot")
    f.wait_converged(30)
    old = {i: float(i) for i in range(100)}
    # 40k rows: several snapshot parts, swapped in only when the last one commits.
    result = f.publish_features(rows(victim, range(1000, 41_000), T0 + 1, scale=2.0), kind="snapshot")
    assert result.targets[0].messages > 1
    new = {i: i * 2.0 for i in range(1000, 41_000)}
    time.sleep(0.05)
    f.cut(victim)
    f.kill(victim)
    f.start_device(victim)
    got = {r["entity_id"]: r["value"] for r in f.device(victim).rows(SIM_VIEW)}
    assert got in (old, new), f"a half-swapped snapshot: {len(got)} rows"
    f.restore(victim)
    f.wait_converged(60)
    assert _diffs(f) == []


def test_kill_9_during_model_downloads_and_installs_leaves_the_store_consistent(fleet: Any) -> None:
    rng = random.Random(3)
    f: Fleet = fleet(2, killable=[0])
    victim = f.ids[0]
    f.set_latency(victim, 0.03)  # stretch the chunked transfer so kills land inside it
    partial_seen = 0
    for version in (2, 3, 4, 5):
        f.release(f.build_model(version), chunk_size=512)  # 17 chunks, window of 4
        time.sleep(rng.uniform(0.05, 0.5))
        f.cut(victim)
        f.kill(victim)
        partial_seen += any(Path(f.device(victim).data_dir, "sync").rglob("*.part"))
        f.start_device(victim)
        dev = f.device(victim)
        integrity = dev.call("check_integrity")
        assert set(integrity["databases"].values()) == {"ok"}, integrity
        active = integrity["models"].get("sim")
        assert active in (None, *range(1, version + 1))  # verify_active loaded and health-checked it
        f.restore(victim)
        f.wait_converged(60)
        assert dev.probe()["models"] == {"sim": version}
    assert partial_seen >= 1, "no kill landed during a transfer"


def test_canary_rollout_halts_when_failures_pass_the_threshold(fleet: Any) -> None:
    f: Fleet = fleet(10)
    f.release(f.build_model(2))
    f.wait_converged(30)
    result = f.release(f.build_model(3, broken=True), canary_percent=50, failure_threshold=0.2)
    canary = set(result.offered)
    assert 0 < len(canary) < 10

    def halted() -> Any:
        rel = next(r for r in f.publisher.releases() if r.version == 3)
        return rel.state == "halted", f"release state {rel.state}"

    wait_until(halted, 30)
    time.sleep(0.5)
    probes = f.probe()
    assert all(p["models"] == {"sim": 2} for p in probes.values())  # nobody runs the broken model
    targets = f.publisher.release_targets(result.release.id)
    failed = {d for d, (_started, outcome) in targets.items() if outcome and outcome != "installed"}
    assert failed and failed <= canary
    assert f.convergence().done  # v2 is still what the fleet should run


def test_broker_restart_mid_rollout_and_a_skewed_clock(fleet: Any) -> None:
    f: Fleet = fleet(6)
    f.publish_features([r for d in f.ids for r in rows(d, range(10), T0)], kind="snapshot")
    f.release(f.build_model(2))
    f.restart_broker(down_s=0.5)
    f.publish_features([r for d in f.ids for r in rows(d, range(5, 15), T0 + 5, scale=3.0)])
    f.wait_converged(60)
    assert _diffs(f) == []
    # Device 1's clock runs two days ahead: a manifest valid for an hour is already expired there.
    f.skew_clock(1, 2 * 86400)
    f.publisher.release(f.build_model(3), expires_in=3600)
    others = [d for d in f.ids if d != f.ids[1]]
    wait_until(lambda: all(f.device(d).probe()["models"] == {"sim": 3} for d in others), 30, what="v3 elsewhere")
    time.sleep(0.5)
    assert f.device(1).probe()["models"] == {"sim": 2}
    reports = f.device(1).status()["sync"]["install_reports"]
    assert any("refused" in str(r) for r in reports.values()), reports


def test_a_broker_started_elsewhere_by_its_credentials_file(fleet: Any, start_broker: Any) -> None:
    from cloud_sync.fleet import FleetError

    broker = start_broker(devices=("dev-0000", "dev-0001"))
    f: Fleet = fleet(2, broker=str(broker.write_credentials_file()))
    f.publish_features([r for d in f.ids for r in rows(d, range(3), T0)], kind="snapshot")
    f.wait_converged(30)
    assert _diffs(f) == []
    with pytest.raises(FleetError, match="external"):
        f.restart_broker()
    assert broker.running  # the fleet does not own it


def test_thread_devices_cannot_be_killed_and_unknown_devices_are_named(fleet: Any) -> None:
    from cloud_sync.fleet import FleetError

    f: Fleet = fleet(1)
    with pytest.raises(FleetError, match="killable"):
        f.kill(0)
    with pytest.raises(FleetError, match="no device #5"):
        f.device(5)
    with pytest.raises(FleetError, match="no device 'x'"):
        f.cut("x")


def test_every_device_condition_passes_and_fails_with_the_probes(fleet: Any) -> None:
    from cloud_sync.fleet import ConditionTimeout

    f: Fleet = fleet(3)
    head = f.publish_features([r for d in f.ids for r in rows(d, range(4), T0)], kind="snapshot").targets[0]
    want = [head.epoch, head.seq_last]
    f.wait_until(f.every_device(lambda p: p["watermarks"].get(SIM_VIEW) == want), 30)
    f.cut(2)  # offline devices are not asked by default ...
    f.wait_until(f.every_device(lambda p: p["watermarks"].get(SIM_VIEW) == want), 5)
    with pytest.raises(ConditionTimeout, match=r"3 devices do not satisfy it:\n  dev-0000: .*'models': \{\}"):
        f.wait_until(f.every_device(lambda p: p["models"].get("sim") == 9, include_offline=True), 0.3)
