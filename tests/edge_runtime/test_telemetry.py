"""Telemetry is aggregate-only, lands in a real SQLite outbox, and noise follows epsilon."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from edge_runtime import StoreClosedError
from edge_runtime._outbox import Outbox
from edge_runtime._telemetry import LATENCY_BUCKETS_MS, TelemetryRecorder


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "telemetry.db")
    yield box
    box.close()


def test_outbox_is_at_least_once_until_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    first = box.put("telemetry", {"n": 1})
    second = box.put("telemetry", {"n": 2})
    items = box.pending()
    assert [i.id for i in items] == [first, second]
    assert [i.payload for i in items] == [{"n": 1}, {"n": 2}]
    # not acknowledged: offered again, with the attempt counted
    again = box.pending()
    assert [i.attempts for i in again] == [2, 2]
    assert box.mark_sent([first, "unknown-id"]) == 1
    assert [i.id for i in box.pending()] == [second]
    box.close()
    # survives a restart
    reopened = Outbox(tmp_path / "o.db")
    assert [i.id for i in reopened.pending()] == [second]
    reopened.close()
    with pytest.raises(StoreClosedError):
        reopened.put("x", {})


def test_outbox_bounds_its_size(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_rows=3)
    ids = [box.put("t", {"i": i}) for i in range(5)]
    assert len(box) == 3
    assert [i.id for i in box.pending()] == ids[2:]
    box.close()


def test_report_holds_aggregates_only(outbox: Outbox) -> None:
    clock = FakeClock()
    rec = TelemetryRecorder(outbox, period_s=60, clock=clock)
    secret_entity, secret_value = "user-8842-private", 0.123456789
    for i in range(10):
        rec.record(
            "ctr",
            3,
            rows=2,
            latency_s=0.0002 * (i + 1),
            first_outputs=[0.05, 0.95],
            cache_hits=1,
            feature_status_counts={"user_data:ctr": {"missing": 1, "expired": 0, "defaulted": 1}},
        )
    assert rec.maybe_flush() is None  # period not over
    clock.t += 61
    item_id = rec.maybe_flush()
    assert item_id is not None
    (item,) = outbox.pending()
    report = item.payload["models"]["ctr"]
    assert report["version"] == 3
    assert report["predictions"] == 20
    assert report["cache_hits"] == 10
    assert sum(report["latency_ms"]["counts"]) == 10
    assert len(report["latency_ms"]["counts"]) == len(LATENCY_BUCKETS_MS) + 1
    assert report["output"]["counts"][0] == 10 and report["output"]["counts"][-1] == 10
    assert report["features"]["user_data:ctr"] == {"missing": 10, "expired": 0, "defaulted": 10}
    raw = json.dumps(item.payload)
    assert secret_entity not in raw and str(secret_value) not in raw
    # nothing recorded since: no empty report
    clock.t += 61
    assert rec.maybe_flush() is None


def test_laplace_noise_scales_with_epsilon(tmp_path: Path) -> None:
    def spread(epsilon: float) -> float:
        box = Outbox(tmp_path / f"e{epsilon}.db", max_rows=1000)
        rec = TelemetryRecorder(box, epsilon=epsilon)
        values = []
        for _ in range(200):
            rec.record("m", 1, rows=100, latency_s=0.001)
            rec.flush()
        values = [i.payload["models"]["m"]["predictions"] for i in box.pending(limit=1000)]
        box.close()
        assert len(values) == 200
        assert abs(statistics.mean(values) - 100) < 10 * 4 / epsilon  # unbiased around the true count
        return statistics.pstdev(values)

    noisy, quiet = spread(0.5), spread(50.0)
    assert noisy > 5 * quiet
    assert noisy > 1.0
