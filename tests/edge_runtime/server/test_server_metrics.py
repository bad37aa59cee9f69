"""/metrics: Prometheus text exposition, aggregate-only, consistent with the requests made."""

from __future__ import annotations

import re

from _api_helpers import Client
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime.server import LATENCY_BUCKETS, ApiMetrics

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """A strict reader of the text format: every line a HELP/TYPE comment or a well-formed sample."""
    types: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text[:-1].split("\n"):  # the format separates lines by \n only
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram")
            types[name] = kind
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def value(samples: list[tuple[str, dict[str, str], float]], metric: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == metric and all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_metrics_count_predictions_latency_cache_hits_and_rows(client: Client) -> None:
    for _ in range(3):
        client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 1}, {"user_id": 2}]})
    client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 4}], "mode": "cached"})
    client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 4}], "mode": "cached"})
    client.post("/v1/predict/nope", {"entity_rows": [{"user_id": 4}]})
    client.post("/v1/features/user_data", {"rows": [{"user_id": 987654, "click_through_rate": 0.123456}]})
    client.post("/v1/events/orders", {"rows": [{"user_id": 987654, "amount": 55.5}]})
    status, headers, text = client.get("/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    types, samples = parse(text)
    assert types["edge_runtime_predict_latency_seconds"] == "histogram"
    assert types["edge_runtime_predictions_total"] == "counter"
    assert value(samples, "edge_runtime_predictions_total", model="ctr", mode="online") == 3
    assert value(samples, "edge_runtime_predictions_total", model="ctr", mode="cached") == 2
    assert value(samples, "edge_runtime_prediction_rows_total", model="ctr", mode="online") == 6
    assert value(samples, "edge_runtime_prediction_cache_hits_total", model="ctr") == 1
    assert value(samples, "edge_runtime_predict_latency_seconds_count", model="ctr") == 5
    assert value(samples, "edge_runtime_predict_latency_seconds_sum", model="ctr") > 0
    buckets = [(lab["le"], v) for n, lab, v in samples if n == "edge_runtime_predict_latency_seconds_bucket"]
    assert [le for le, _ in buckets] == [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and counts[-1] == 5
    route = "/v1/predict/{model}"
    assert value(samples, "edge_runtime_http_requests_total", method="POST", route=route, code="200") == 5
    assert value(samples, "edge_runtime_http_requests_total", method="POST", route=route, code="404") == 1
    assert value(samples, "edge_runtime_api_rows_written_total", kind="view", name="user_data") == 1
    assert value(samples, "edge_runtime_api_rows_written_total", kind="stream", name="orders") == 1
    assert value(samples, "edge_runtime_model_active_version", model="ctr") == 1
    assert value(samples, "edge_runtime_feature_rows", name="user_data", kind="feature_view") == 51
    assert value(samples, "edge_runtime_feature_rows", name="orders", kind="stream") == 1
    assert value(samples, "edge_runtime_feature_rows_expired", name="user_data") == 0
    # Aggregate-only: no entity id, feature value or unknown model name from any request.
    for secret in ("987654", "0.123456", "55.5", "nope"):
        assert secret not in text


def test_unknown_paths_and_methods_do_not_become_labels(client: Client) -> None:
    client.get("/v1/predict/user-12345/secret")
    client.request("BREW12345", "/healthz")
    text = client.get("/metrics")[2]
    assert "12345" not in text
    _, samples = parse(text)
    assert value(samples, "edge_runtime_http_requests_total", method="GET", route="(unmatched)", code="404") == 1
    assert value(samples, "edge_runtime_http_requests_total", method="other", route="/healthz", code="405") == 1


@given(st.text(min_size=1, max_size=30), st.lists(st.floats(0, 5), min_size=1, max_size=20))
def test_rendering_is_parseable_for_any_label_and_latencies(model: str, latencies: list[float]) -> None:
    metrics = ApiMetrics()
    for lat in latencies:
        metrics.prediction(model, "online", 1, 0, lat)
    _, samples = parse(metrics.render(feature_stats=[], active={model: 3}))
    assert value(samples, "edge_runtime_predict_latency_seconds_count") == len(latencies)
    inf = value(samples, "edge_runtime_predict_latency_seconds_bucket", le="+Inf")
    assert inf == len(latencies)
    below_1s = value(samples, "edge_runtime_predict_latency_seconds_bucket", le="1.0")
    assert below_1s == sum(1 for lat in latencies if lat <= 1.0)
