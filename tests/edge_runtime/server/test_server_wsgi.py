"""LocalApi is a conforming WSGI application (checked by wsgiref's validator), usable under any WSGI server."""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

from edge_runtime.server import LocalApi


def call(app: Any, method: str, path: str, body: bytes = b"", query: str = "", **extra: str) -> tuple[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        **extra,
    }
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"] = status
        seen["headers"] = dict(headers)
        return lambda data: None

    result = validator(app)(environ, start_response)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)  # the validator's iterator insists on being closed
        if close is not None:
            close()
    assert int(seen["headers"]["Content-Length"]) == len(data)
    if seen["headers"]["Content-Type"] == "application/json":
        return seen["status"], json.loads(data)
    return seen["status"], data.decode()


def test_every_endpoint_through_the_wsgi_validator(runtime: Any) -> None:
    app = LocalApi(runtime)
    assert call(app, "GET", "/healthz")[0] == "200 OK"
    status, body = call(
        app,
        "POST",
        "/v1/predict/ctr",
        json.dumps({"entity_rows": [{"user_id": 1}]}).encode(),
        CONTENT_TYPE="application/json",
    )
    assert status == "200 OK" and body["version"] == 1
    status, body = call(app, "GET", "/v1/features", query="features=user_data:is_premium&user_id=5")
    assert status == "200 OK" and body["features"]["user_data:is_premium"]["values"] == [True]
    status, body = call(
        app,
        "POST",
        "/v1/features/user_data",
        json.dumps({"rows": [{"user_id": 5, "is_premium": False}]}).encode(),
        CONTENT_TYPE="application/json",
    )
    assert status == "200 OK" and body["written"] == 1
    status, text = call(app, "GET", "/metrics")
    assert status == "200 OK" and 'edge_runtime_predictions_total{model="ctr",mode="online"} 1' in text
    status, body = call(app, "DELETE", "/healthz")
    assert status == "405 Method Not Allowed" and body["error"]["status"] == 405
