"""The local API over real HTTP (TCP and a Unix socket): every endpoint and every error answer."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from _api_helpers import Client, seed_runtime

from edge_runtime import ConfigError, EdgeRuntime, ModelSettings, RuntimeConfig
from edge_runtime.server import LocalServer, is_loopback

REFS = "user_data:click_through_rate,user_data:is_premium"


def _error(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    return body["error"]


# --- health ------------------------------------------------------------------------------------------------------


def test_healthz_reports_active_models_and_open_store(client: Client) -> None:
    status, headers, body = client.get("/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body == {"status": "ok", "store": "open", "models": {"ctr": 1}}


def test_healthz_is_unavailable_without_an_active_model(tmp_path: Path) -> None:
    with EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "empty")) as rt, LocalServer(rt, port=0) as server:
        server.start()
        status, _, body = Client(server).get("/healthz")
    assert status == 503
    assert body["status"] == "unavailable" and body["models"] == {}
    assert "no model" in body["reason"]


def test_closed_runtime_answers_503_without_details(tmp_path: Path) -> None:
    rt = seed_runtime(tmp_path / "data")
    with LocalServer(rt, port=0) as server:
        server.start()
        rt.close()
        c = Client(server)
        status, _, body = c.get("/healthz")
        assert status == 503 and body["store"] == "closed"
        status, _, body = c.get("/v1/features?features=user_data:is_premium&user_id=1")
        assert status == 503 and _error(body)["message"] == "the runtime is not available right now"
        status, _, body = c.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 1}]})
    # The model store reports its closing as a plain ModelError: an incident, and still no path in the answer.
    assert status in (500, 503)
    assert str(tmp_path) not in json.dumps(body)


# --- predict -----------------------------------------------------------------------------------------------------


def test_predict_online_returns_prediction_dict(client: Client, runtime: Any) -> None:
    status, _, body = client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 1}, {"user_id": 999}]})
    assert status == 200
    assert body["model"] == "ctr" and body["version"] == 1 and body["mode"] == "online"
    probs = body["outputs"]["probability"]
    assert len(probs) == 2 and all(0.0 <= p[0] <= 1.0 for p in probs)
    expected = runtime.predict("ctr", [{"user_id": 1}, {"user_id": 999}], mode="online").output
    assert [p[0] for p in probs] == pytest.approx(expected.reshape(-1).tolist(), abs=1e-6)
    assert body["feature_status"]["user_data:click_through_rate"] == ["present", "defaulted"]
    assert body["cached"] == [False, False]
    assert body["latency_ms"] > 0


def test_predict_cached_miss_then_hit(client: Client) -> None:
    req = {"entity_rows": [{"user_id": 3}], "mode": "cached"}
    first = client.post("/v1/predict/ctr", req)[2]
    second = client.post("/v1/predict/ctr", req)[2]
    assert first["cached"] == [False] and second["cached"] == [True]
    assert first["outputs"] == second["outputs"]


def test_predict_precomputed_and_missing_prediction_is_null(tmp_path: Path) -> None:
    settings = ModelSettings(name="ctr", prediction_feature="user_scores:ctr_prediction", fallback_to_model=False)
    rt = seed_runtime(tmp_path / "data", models=(settings,))
    try:
        with LocalServer(rt, port=0) as server:
            server.start()
            status, _, body = Client(server).post(
                "/v1/predict/ctr", {"entity_rows": [{"user_id": 4}, {"user_id": 40}], "mode": "precomputed"}
            )
    finally:
        rt.close()
    assert status == 200
    assert body["outputs"]["probability"][0] == [pytest.approx(0.04)]
    assert body["outputs"]["probability"][1] == [None]  # NaN has no JSON form
    assert body["feature_status"] == {"user_scores:ctr_prediction": ["present", "missing"]}
    assert body["cached"] == [True, False]


def test_predict_tensors_casts_json_numbers_to_the_input_dtype(client: Client, runtime: Any) -> None:
    status, _, body = client.post("/v1/predict/ctr", {"inputs": {"features": [[0, 0, 0, 0, 0, 0, 0, 0]]}})
    assert status == 200 and body["mode"] == "tensors" and body["feature_status"] == {}
    import numpy as np

    expected = runtime.predict("ctr", inputs={"features": np.zeros((1, 8), np.float32)}).output
    assert body["outputs"]["probability"][0] == pytest.approx(expected[0].tolist(), abs=1e-6)


def test_predict_request_data_is_accepted(client: Client) -> None:
    status, _, body = client.post(
        "/v1/predict/ctr", {"entity_rows": [{"user_id": 1}], "request_data": {"channel": "app"}}
    )
    assert status == 200 and len(body["outputs"]["probability"]) == 1


@pytest.mark.parametrize(
    ("body", "status", "field", "fragment"),
    [
        ([1, 2], 400, None, "JSON object"),
        ({"entity_rows": [{"user_id": 1}], "color": "red"}, 400, "color", "unknown field 'color'"),
        ({}, 400, "entity_rows", "entity_rows is required"),
        ({"entity_rows": "user 1"}, 400, "entity_rows", "list of dicts"),
        ({"entity_rows": [{"uid": 1}]}, 400, "entity_rows[0].user_id", "join key 'user_id' is missing"),
        ({"entity_rows": [{"user_id": 1}, 7]}, 400, "entity_rows[1]", "expected a dict per entity row"),
        ({"mode": "tensors"}, 400, "inputs", "needs inputs"),
        ({"entity_rows": [{"user_id": 1}], "mode": "fastest"}, 400, "mode", "unknown serving mode"),
        ({"entity_rows": [{"user_id": 1}], "mode": 3}, 400, "mode", "mode must be a string"),
        ({"inputs": [[0.0] * 8]}, 400, "inputs", "inputs must be an object"),
        ({"inputs": {"features": [[0.0] * 7]}}, 400, "inputs", "dimension 1 must be 8"),
        ({"inputs": {"features": [["a"] * 8]}}, 400, "inputs.features", "nested list of numbers"),
        ({"inputs": {"pixels": [[0.0] * 8]}}, 400, "inputs", "missing input 'features'"),
        ({"entity_rows": [{"user_id": 1}], "request_data": "x"}, 400, "request_data", "request_data must be"),
    ],
)
def test_predict_bad_input_is_400_naming_the_field(
    client: Client, body: Any, status: int, field: str | None, fragment: str
) -> None:
    got, _, answer = client.post("/v1/predict/ctr", body)
    err = _error(answer)
    assert got == status == err["status"]
    assert fragment in err["message"]
    assert err.get("field") == field


def test_predict_unknown_model_is_404(client: Client) -> None:
    status, _, body = client.post("/v1/predict/fraud", {"entity_rows": [{"user_id": 1}]})
    err = _error(body)
    assert status == 404 and err["field"] == "model" and "fraud" in err["message"]


def test_invalid_json_is_400(client: Client) -> None:
    status, _, body = client.post("/v1/predict/ctr", raw=b"{not json")
    assert status == 400 and _error(body)["field"] == "body"


def test_body_must_be_declared_json(client: Client) -> None:
    # A cross-site form or text/plain POST from a browser must not reach the runtime.
    raw = json.dumps({"entity_rows": [{"user_id": 1}]}).encode()
    status, _, body = client.post("/v1/predict/ctr", raw=raw, headers={"Content-Type": "text/plain"})
    assert status == 415 and _error(body)["field"] == "Content-Type"


def test_oversized_body_is_413(runtime: Any) -> None:
    with LocalServer(runtime, port=0, max_body=1000) as server:
        server.start()
        rows = [{"user_id": i} for i in range(200)]
        status, _, body = Client(server).post("/v1/predict/ctr", {"entity_rows": rows})
    # waitress refuses it before the app runs (it buffers bodies), so the answer is its plain-text 413.
    assert status == 413 and "1000" in (body if isinstance(body, str) else _error(body)["message"])


def test_wrong_method_is_405_with_allow(client: Client) -> None:
    status, headers, body = client.get("/v1/predict/ctr")
    assert status == 405 and headers["allow"] == "POST"
    assert "GET is not allowed" in _error(body)["message"]


def test_unknown_path_is_404(client: Client) -> None:
    status, _, body = client.get("/v2/everything")
    assert status == 404 and "no such endpoint" in _error(body)["message"]


def test_foreign_host_header_is_refused(client: Client) -> None:
    status, _, body = client.get("/healthz", headers={"Host": "attacker.example:8787"})
    if client.server.unix_socket is None:
        assert status == 421 and _error(body)["field"] == "Host"
    else:  # only local processes with the socket's permissions can connect at all
        assert status == 200


class _FaultyRuntime(EdgeRuntime):
    """A real runtime with one injected fault: a bug inside predict that must not leak."""

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail /var/lib/edge/features.db row 17")


def test_unexpected_error_is_500_without_internals(
    tmp_path: Path, socket_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt = seed_runtime(tmp_path / "data", cls=_FaultyRuntime)
    try:
        with LocalServer(rt, unix_socket=socket_path) as server:
            server.start()
            status, _, body = Client(server).post("/v1/predict/ctr", {"entity_rows": [{"user_id": 1}]})
    finally:
        rt.close()
    err = _error(body)
    assert status == 500
    assert "secret" not in json.dumps(body) and "features.db" not in json.dumps(body)
    incident = err["message"].rsplit(" ", 1)[-1]
    assert any(incident in r.getMessage() for r in caplog.records)
    assert any("secret detail" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


# --- features ----------------------------------------------------------------------------------------------------


def test_get_features_values_and_statuses(client: Client) -> None:
    status, _, body = client.get(f"/v1/features?features={REFS}&user_id=5&user_id=777")
    assert status == 200
    assert body["entities"] == {"user_id": [5, 777]}
    ctr = body["features"]["user_data:click_through_rate"]
    assert ctr["values"][0] == pytest.approx(0.07) and ctr["values"][1] is None
    assert ctr["statuses"] == ["PRESENT", "NOT_FOUND"]
    assert body["features"]["user_data:is_premium"]["values"][0] is True


@pytest.mark.parametrize(
    ("query", "status", "field"),
    [
        ("user_id=1", 400, "features"),
        ("features=click_through_rate&user_id=1", 400, "features"),
        (f"features={REFS}", 400, "entity"),
        ("features=user_data:nope&user_id=1", 400, "features"),
        ("features=sessions:count&user_id=1", 404, "features"),
        (f"features={REFS}&user_id=1&user_id=2&region=eu", 400, "entity"),
    ],
)
def test_get_features_errors(client: Client, query: str, status: int, field: str) -> None:
    got, _, body = client.get(f"/v1/features?{query}")
    assert got == status and _error(body)["field"] == field


def test_write_features_then_read_and_predict_changes(client: Client) -> None:
    before = client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 600}]})[2]
    row = {
        "user_id": 600,
        "click_through_rate": 0.3,
        "number_of_clicks": 90,
        "average_page_duration": 80.0,
        "days_since_signup": 20,
        "sessions_last_7d": 14,
        "is_premium": True,
        "avg_order_value": 70.0,
    }
    status, _, body = client.post("/v1/features/user_data", {"rows": [row]})
    assert status == 200 and body == {"view": "user_data", "written": 1}
    got = client.get("/v1/features?features=user_data:number_of_clicks&user_id=600")[2]
    assert got["features"]["user_data:number_of_clicks"] == {"values": [90], "statuses": ["PRESENT"]}
    after = client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 600}]})[2]
    assert after["feature_status"]["user_data:number_of_clicks"] == ["present"]
    assert after["outputs"] != before["outputs"]


def test_feature_write_invalidates_cached_prediction(client: Client) -> None:
    req = {"entity_rows": [{"user_id": 8}], "mode": "cached"}
    client.post("/v1/predict/ctr", req)
    hit = client.post("/v1/predict/ctr", req)[2]
    assert hit["cached"] == [True]
    client.post("/v1/features/user_data", {"rows": [{"user_id": 8, "click_through_rate": 0.4, "is_premium": True}]})
    after = client.post("/v1/predict/ctr", req)[2]
    assert after["cached"] == [False] and after["outputs"] != hit["outputs"]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/features/sessions", {"rows": [{"user_id": 1}]}, 404, "view"),
        ("/v1/features/user_data", {"rows": [{"user_id": 1, "click_through_rate": "high"}]}, 400, None),
        ("/v1/features/user_data", {"rows": {"user_id": 1}}, 400, "rows"),
        ("/v1/features/user_data", {"data": []}, 400, "rows"),
        ("/v1/events/clicks", {"rows": [{"user_id": 1}]}, 404, "stream"),
        ("/v1/events/orders", {"rows": [{"user_id": 1, "amount": "lots"}]}, 400, "rows[0].amount"),
    ],
)
def test_write_errors(client: Client, path: str, body: Any, status: int, field: str | None) -> None:
    got, _, answer = client.post(path, body)
    err = _error(answer)
    assert got == status
    if field is not None:
        assert err["field"] == field
    else:
        assert err["field"] == "rows[0].click_through_rate" and "nothing was written" in err["message"]


def test_push_events_feed_the_streaming_aggregate(client: Client) -> None:
    query = "/v1/features?features=user_stream:orders_last_10m&user_id=9"
    assert client.get(query)[2]["features"]["user_stream:orders_last_10m"]["values"] == [0]
    before = client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 9}]})[2]
    status, _, body = client.post("/v1/events/orders", {"rows": [{"user_id": 9, "amount": 12.5}] * 3})
    assert status == 200 and body == {"stream": "orders", "pushed": 3}
    assert client.get(query)[2]["features"]["user_stream:orders_last_10m"]["values"] == [3]
    after = client.post("/v1/predict/ctr", {"entity_rows": [{"user_id": 9}]})[2]
    assert after["outputs"]["probability"][0][0] > before["outputs"]["probability"][0][0]


# --- concurrency, binding ----------------------------------------------------------------------------------------


def test_concurrent_predictions_and_writes(client: Client) -> None:
    failures: list[Any] = []

    def predictor(seed: int) -> None:
        for i in range(25):
            status, _, body = client.post(
                "/v1/predict/ctr", {"entity_rows": [{"user_id": (seed * 25 + i) % 50 + 1}], "mode": "cached"}
            )
            if status != 200 or not math.isfinite(body["outputs"]["probability"][0][0]):
                failures.append((status, body))

    def writer() -> None:
        for i in range(25):
            status, _, body = client.post(
                "/v1/features/user_data", {"rows": [{"user_id": i % 50 + 1, "click_through_rate": i / 100}]}
            )
            if status != 200:
                failures.append((status, body))

    threads = [threading.Thread(target=predictor, args=(s,)) for s in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures


def test_non_loopback_host_is_refused_unless_allowed(runtime: Any) -> None:
    with pytest.raises(ConfigError, match="no authentication"):
        LocalServer(runtime, host="0.0.0.0", port=0)
    with LocalServer(runtime, host="0.0.0.0", port=0, allow_remote=True) as server:
        server.start()
        # --allow-remote also drops the Host check: remote clients name the device's address.
        conn = Client(server)
        assert conn.get("/healthz", headers={"Host": "device.lan"})[0] == 200


def test_port_in_use_is_a_clean_error(runtime: Any) -> None:
    with LocalServer(runtime, port=0) as first, pytest.raises(ConfigError, match="cannot listen"):
        LocalServer(runtime, port=first.port or 0)


def test_unix_socket_is_private_and_removed_on_stop(runtime: Any, socket_path: Path) -> None:
    path = socket_path
    server = LocalServer(runtime, unix_socket=path).start()
    try:
        assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
        assert server.url == f"unix:{path}"
        assert server.port is None
    finally:
        server.stop()
    assert not path.exists()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("device.lan", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_server_stops_promptly(runtime: Any) -> None:
    server = LocalServer(runtime, port=0).start()
    Client(server).get("/healthz")
    server.stop()
    server.stop()  # idempotent
    assert server._thread is not None and not server._thread.is_alive()
