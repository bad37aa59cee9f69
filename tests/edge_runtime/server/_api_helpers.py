"""Helpers for the local API tests: a seeded real runtime, an HTTP client over TCP or a Unix socket."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

from edge_runtime import EdgeRuntime, ModelSettings, RuntimeConfig
from edge_runtime.server import LocalServer

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"


def seed_runtime(data_dir: Path, *, models: tuple[ModelSettings, ...] = (), cls: type = EdgeRuntime) -> Any:
    """A runtime with the example definitions, ctr-onnx-int8 active, users 1-50 in user_data and scores for 1-10."""
    config = RuntimeConfig(data_dir=data_dir, definitions=MODELS / "definitions.toml", models=models)
    rt = cls(config)
    rt.models.install(MODELS / "ctr-onnx-int8", activate=True)
    now = time.time()
    rt.features.write_to_online_store(
        "user_data",
        [
            {
                "user_id": i,
                "click_through_rate": 0.02 + (i % 10) / 100,
                "number_of_clicks": i % 40,
                "average_page_duration": 20.0 + i,
                "days_since_signup": 10 * i,
                "sessions_last_7d": i % 9,
                "is_premium": i % 5 == 0,
                "avg_order_value": 15.0 + i,
                "event_timestamp": now - 60,
            }
            for i in range(1, 51)
        ],
    )
    rt.features.write_to_online_store(
        "user_scores", [{"user_id": i, "ctr_prediction": i / 100, "event_timestamp": now - 60} for i in range(1, 11)]
    )
    return rt


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the Host header stays 'localhost')."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Client:
    """Plain HTTP requests to a running LocalServer; returns (status, headers, parsed body)."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server

    def connection(self) -> http.client.HTTPConnection:
        if self.server.unix_socket is not None:
            return UnixHTTPConnection(str(self.server.unix_socket))
        return http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = self.connection()
        try:
            hdrs = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            payload = resp.read()
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if rheaders.get("content-type", "").startswith("application/json"):
            return resp.status, rheaders, json.loads(payload)
        return resp.status, rheaders, payload.decode()

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, str], Any]:
        return self.request("POST", path, body, **kw)
