"""Aggregate counters for the local API, rendered in the Prometheus text exposition format (version 0.0.4).

Only aggregates are kept: counts, latency histograms and row totals per model, mode, view or route. Label values
come from bounded sets — installed model names, registered view names, serving modes, route templates and status
codes — never from entity ids, feature values or anything else a request carries.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

#: Upper bounds (seconds) of the predict latency histogram: 50 µs to 1 s, for a Pi Zero and a laptop alike.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class _Histogram:
    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.sum = 0.0
        self.total = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.total += 1


class ApiMetrics:
    """Thread-safe counters the local API updates on every request; :meth:`render` formats them for /metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.time()
        self._requests: dict[tuple[str, str, int], int] = {}
        self._predictions: dict[tuple[str, str], int] = {}
        self._rows: dict[tuple[str, str], int] = {}
        self._cache_hits: dict[str, int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._written: dict[tuple[str, str], int] = {}

    def request(self, method: str, route: str, status: int) -> None:
        """Count one HTTP request by method, route template (not the path: it may hold names) and status."""
        key = (method, route, status)
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1

    def prediction(self, model: str, mode: str, rows: int, cache_hits: int, latency_s: float) -> None:
        """Count one successful predict call of an installed model."""
        with self._lock:
            key = (model, mode)
            self._predictions[key] = self._predictions.get(key, 0) + 1
            self._rows[key] = self._rows.get(key, 0) + rows
            self._cache_hits[model] = self._cache_hits.get(model, 0) + cache_hits
            hist = self._latency.get(model)
            if hist is None:
                hist = self._latency[model] = _Histogram()
            hist.observe(latency_s)

    def written(self, kind: str, name: str, rows: int) -> None:
        """Count rows written through the API to a feature view (``kind='view'``) or events to a stream."""
        with self._lock:
            key = (kind, name)
            self._written[key] = self._written.get(key, 0) + rows

    def render(self, *, feature_stats: Iterable[Mapping[str, Any]], active: Mapping[str, int | None]) -> str:
        """The exposition text: these counters plus the store's row counts and the active model versions."""
        with self._lock:
            requests = dict(self._requests)
            predictions = dict(self._predictions)
            rows = dict(self._rows)
            hits = dict(self._cache_hits)
            latency = {m: (list(h.counts), h.sum, h.total) for m, h in self._latency.items()}
            written = dict(self._written)
        out: list[str] = []
        _family(out, "edge_runtime_uptime_seconds", "gauge", "Seconds since the local API started.")
        out.append(f"edge_runtime_uptime_seconds {_num(time.time() - self._started)}")
        _family(out, "edge_runtime_http_requests_total", "counter", "HTTP requests by method, route and status.")
        for (method, route, status), n in sorted(requests.items()):
            out.append(f"edge_runtime_http_requests_total{_labels(method=method, route=route, code=status)} {n}")
        _family(out, "edge_runtime_predictions_total", "counter", "Successful predict calls by model and mode.")
        for (model, mode), n in sorted(predictions.items()):
            out.append(f"edge_runtime_predictions_total{_labels(model=model, mode=mode)} {n}")
        _family(out, "edge_runtime_prediction_rows_total", "counter", "Entity rows predicted, by model and mode.")
        for (model, mode), n in sorted(rows.items()):
            out.append(f"edge_runtime_prediction_rows_total{_labels(model=model, mode=mode)} {n}")
        _family(
            out,
            "edge_runtime_prediction_cache_hits_total",
            "counter",
            "Rows answered without running the model (prediction cache or precomputed view), by model.",
        )
        for model, n in sorted(hits.items()):
            out.append(f"edge_runtime_prediction_cache_hits_total{_labels(model=model)} {n}")
        _family(
            out,
            "edge_runtime_predict_latency_seconds",
            "histogram",
            "Latency of predict calls inside the runtime (excluding HTTP), by model.",
        )
        for model, (counts, total_s, count) in sorted(latency.items()):
            cumulative = 0
            for bound, c in zip(LATENCY_BUCKETS, counts, strict=True):
                cumulative += c
                out.append(
                    f"edge_runtime_predict_latency_seconds_bucket{_labels(model=model, le=_num(bound))} {cumulative}"
                )
            out.append(f"edge_runtime_predict_latency_seconds_bucket{_labels(model=model, le='+Inf')} {count}")
            out.append(f"edge_runtime_predict_latency_seconds_sum{_labels(model=model)} {_num(total_s)}")
            out.append(f"edge_runtime_predict_latency_seconds_count{_labels(model=model)} {count}")
        _family(out, "edge_runtime_api_rows_written_total", "counter", "Rows written through the API, by target.")
        for (kind, name), n in sorted(written.items()):
            out.append(f"edge_runtime_api_rows_written_total{_labels(kind=kind, name=name)} {n}")
        _family(out, "edge_runtime_model_active_version", "gauge", "Active version of each installed model.")
        for model, version in sorted(active.items()):
            if version is not None:
                out.append(f"edge_runtime_model_active_version{_labels(model=model)} {version}")
        stats = list(feature_stats)
        _family(out, "edge_runtime_feature_rows", "gauge", "Rows stored per feature view (events per stream).")
        for s in stats:
            out.append(f"edge_runtime_feature_rows{_labels(name=s['name'], kind=s['kind'])} {int(s['rows'] or 0)}")
        _family(out, "edge_runtime_feature_rows_expired", "gauge", "Rows past their view's TTL, per feature view.")
        for s in stats:
            if s.get("expired") is not None:
                out.append(f"edge_runtime_feature_rows_expired{_labels(name=s['name'])} {int(s['expired'])}")
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _escape(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
