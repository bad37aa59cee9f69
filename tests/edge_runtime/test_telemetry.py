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
    rec = TelemetryRecorder(outbox, period_s=300, epsilon=None, clock=clock)
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
    clock.t += 301
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
    clock.t += 301
    assert rec.maybe_flush() is None


def test_laplace_noise_scales_with_epsilon(tmp_path: Path) -> None:
    def spread(epsilon: float) -> float:
        box = Outbox(tmp_path / f"e{epsilon}.db", max_rows=1000)
        rec = TelemetryRecorder(box, epsilon=epsilon, epsilon_per_day=1e9)  # the noise scale, not the budget
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


# --- the privacy floor ---------------------------------------------------------------------------------------


def test_noise_is_on_by_default_and_periods_have_a_floor() -> None:
    from edge_runtime import ConfigError, TelemetrySettings
    from edge_runtime._telemetry import MIN_PERIOD_S

    settings = TelemetrySettings(enabled=True)
    assert settings.epsilon is not None and settings.epsilon > 0, "Laplace noise unless the profile turns it off"
    assert settings.min_predictions >= 10
    with pytest.raises(ConfigError, match="period_s"):
        TelemetrySettings(enabled=True, period_s=1)  # one report could describe one prediction
    with pytest.raises(ConfigError, match="min_predictions"):
        TelemetrySettings(enabled=True, min_predictions=1)
    assert MIN_PERIOD_S >= 300


def test_a_period_with_too_few_predictions_is_held_back_not_reported(outbox: Outbox) -> None:
    clock = FakeClock()
    rec = TelemetryRecorder(outbox, period_s=300, epsilon=None, min_predictions=10, clock=clock)
    rec.record("ctr", 1, rows=1, latency_s=0.001)
    clock.t += 301
    assert rec.maybe_flush() is None, "one prediction never becomes a report of its own"
    assert len(outbox) == 0
    for _ in range(9):
        rec.record("ctr", 1, rows=1, latency_s=0.001)
    clock.t += 301
    assert rec.maybe_flush() is not None
    (item,) = outbox.pending()
    assert item.payload["models"]["ctr"]["predictions"] == 10, "the held-back prediction is counted later"


def test_the_daily_epsilon_budget_is_accounted_and_not_renewed_by_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "t.db")

    def period(rec: TelemetryRecorder) -> str | None:
        for _ in range(20):
            rec.record("ctr", 1, rows=1, latency_s=0.001)
        clock.t += 301
        return rec.maybe_flush()

    rec = TelemetryRecorder(box, period_s=300, epsilon=1.0, epsilon_per_day=2.0, clock=clock)
    assert period(rec) is not None and period(rec) is not None
    assert period(rec) is None, "a third report would spend more than the day's budget"
    assert box.epsilon_spent(rec.day()) == pytest.approx(2.0)
    restarted = TelemetryRecorder(box, period_s=300, epsilon=1.0, epsilon_per_day=2.0, clock=clock)
    assert period(restarted) is None, "a restart does not renew the budget"
    clock.t += 86_400
    assert period(restarted) is not None, "a new UTC day has a new budget"
    box.close()
