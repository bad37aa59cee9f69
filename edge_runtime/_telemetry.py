"""Private, aggregate-only telemetry.

What is recorded, per model and reporting period: prediction and cache-hit counts, a latency histogram, a histogram
of the first output value, counts of missing / expired / defaulted input features, and the model version. What is
never recorded: feature values, inputs, individual outputs, entity ids or request data — the recorder's API does
not accept them. With ``epsilon`` set, Laplace noise calibrated to one prediction's total contribution is added to
every count of a period's report before it reaches the outbox (local differential privacy per period).

The privacy floor: a period lasts at least ``MIN_PERIOD_S``; a model's report holds at least ``min_predictions``
predictions (fewer are held back and reported with a later period, so one report never describes one request);
noise is on by default, and the ε a day's reports spend is accounted in the outbox database against
``epsilon_per_day`` — a report that would overspend waits for the next UTC day, and a restart renews nothing.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._outbox import Outbox
from ._time import Clock, now_us

#: Upper bounds (milliseconds) of the latency buckets; a last bucket catches everything slower.
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)
#: Upper bounds of the output-value buckets (suited to probabilities; values outside land in the end buckets).
OUTPUT_BUCKETS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))

STATUS_KEYS = ("missing", "expired", "defaulted")
#: The shortest reporting period allowed, in seconds.
MIN_PERIOD_S = 300.0
#: The fewest predictions one model's report may describe.
MIN_PREDICTIONS = 10


@dataclass
class _ModelStats:
    version: int | None = None
    predictions: int = 0
    cache_hits: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    outputs: list[int] = field(default_factory=lambda: [0] * (len(OUTPUT_BUCKETS) + 1))
    features: dict[str, dict[str, int]] = field(default_factory=dict)


class TelemetryRecorder:
    """Collects aggregates in memory and writes one report per period to an :class:`Outbox`.

    ``record`` is on the predict path, so it does a few integer increments under an uncontended lock.
    """

    def __init__(
        self,
        outbox: Outbox,
        *,
        period_s: float = 3600.0,
        epsilon: float | None = 1.0,
        min_predictions: int = 20,
        epsilon_per_day: float = 24.0,
        clock: Clock | None = None,
    ) -> None:
        import time

        from ._errors import ConfigError

        if period_s < MIN_PERIOD_S:
            raise ConfigError("too short a period", key="period_s", expected=f">= {MIN_PERIOD_S:g}", got=period_s)
        if min_predictions < MIN_PREDICTIONS:
            raise ConfigError(
                "too few predictions per report",
                key="min_predictions",
                expected=f">= {MIN_PREDICTIONS}",
                got=min_predictions,
            )
        self.outbox = outbox
        self.period_s = period_s
        self.epsilon = epsilon
        self.min_predictions = min_predictions
        self.epsilon_per_day = epsilon_per_day
        #: reports held back because the day's ε budget was spent (counted, for status)
        self.withheld_for_budget = 0
        self._clock: Clock = clock or time.time
        self._lock = threading.Lock()
        self._stats: dict[str, _ModelStats] = {}
        self._period_start_us = now_us(self._clock)
        self._rng = random.SystemRandom()

    def record(
        self,
        model: str,
        version: int | None,
        *,
        rows: int,
        latency_s: float,
        first_outputs: Iterable[float] = (),
        cache_hits: int = 0,
        feature_status_counts: dict[str, dict[str, int]] | None = None,
    ) -> None:
        """Count one predict call of ``rows`` predictions. ``first_outputs`` only feeds a histogram."""
        bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, latency_s * 1000.0)
        with self._lock:
            stats = self._stats.get(model)
            if stats is None:
                stats = self._stats[model] = _ModelStats()
            stats.version = version
            stats.predictions += rows
            stats.cache_hits += cache_hits
            stats.latency[bucket] += 1
            for value in first_outputs:
                if value == value:  # NaN never lands in a bucket
                    stats.outputs[bisect.bisect_left(OUTPUT_BUCKETS, value)] += 1
            if feature_status_counts:
                for feature, counts in feature_status_counts.items():
                    slot = stats.features.setdefault(feature, dict.fromkeys(STATUS_KEYS, 0))
                    for key, n in counts.items():
                        slot[key] += n

    def maybe_flush(self) -> str | None:
        """Write the report if the period has ended; return the outbox id, or None."""
        if now_us(self._clock) - self._period_start_us < self.period_s * 1e6:
            return None
        return self.flush()

    def day(self) -> str:
        """Today's UTC date (``YYYY-MM-DD``) by the recorder's clock: the unit of the ε budget."""
        import datetime as dt

        return dt.datetime.fromtimestamp(self._clock(), tz=dt.timezone.utc).strftime("%Y-%m-%d")

    def flush(self) -> str | None:
        """End the current period now: write its report to the outbox. None when there is nothing to report:
        nothing recorded, fewer than ``min_predictions`` per model (held back for a later period), or the day's
        ε budget spent (held back for the next day)."""
        end = now_us(self._clock)
        with self._lock:
            ready = {n: s for n, s in self._stats.items() if s.predictions >= self.min_predictions}
            if not ready:
                return None
            held = {n: s for n, s in self._stats.items() if n not in ready}
            start = self._period_start_us
            report = self._report(ready, start, end)
            item: str | None
            if self.epsilon is None:
                item = self.outbox.put("telemetry", report)
            else:
                item = self.outbox.put_within_budget(
                    "telemetry", report, day=self.day(), cost=self.epsilon, budget=self.epsilon_per_day
                )
                if item is None:
                    self.withheld_for_budget += 1
                    return None
            self._stats, self._period_start_us = held, end
        return item

    def _report(self, stats: dict[str, _ModelStats], start: int, end: int) -> dict[str, Any]:
        models = {}
        for name, s in stats.items():
            models[name] = {
                "version": s.version,
                "predictions": self._noisy(s.predictions, len(s.features)),
                "cache_hits": self._noisy(s.cache_hits, len(s.features)),
                "latency_ms": {
                    "le": [*LATENCY_BUCKETS_MS, math.inf],
                    "counts": [self._noisy(c, len(s.features)) for c in s.latency],
                },
                "output": {
                    "le": [*OUTPUT_BUCKETS, math.inf],
                    "counts": [self._noisy(c, len(s.features)) for c in s.outputs],
                },
                "features": {
                    f: {k: self._noisy(v, len(s.features)) for k, v in counts.items()}
                    for f, counts in sorted(s.features.items())
                },
            }
        return {
            "period_start_us": start,
            "period_end_us": end,
            "epsilon": self.epsilon,
            "models": models,
        }

    def _noisy(self, count: int, n_features: int) -> float | int:
        if self.epsilon is None:
            return count
        # One prediction changes: predictions, cache_hits, one latency bucket, one output bucket, and up to
        # one status count per feature — that L1 sensitivity sets the Laplace scale for the whole report.
        sensitivity = 4 + n_features
        scale = sensitivity / self.epsilon
        u = self._rng.random() - 0.5
        noise = -scale * math.copysign(1.0, u) * math.log(1 - 2 * abs(u))
        return round(count + noise, 3)
