"""The local API under abuse from the same machine: slow clients, stolen sockets, oversized headers."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from _api_helpers import Client

from edge_runtime import ConfigError
from edge_runtime.server import LocalServer


def test_many_slow_connections_do_not_lock_clients_out(runtime: Any) -> None:
    """110 idle loopback connections used to exhaust waitress's default connection_limit (100) for 120 s."""
    with LocalServer(runtime, port=0, threads=2) as server:
        server.start()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(110)]
        try:
            for s in idle:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
            status, _, body = Client(server).get("/healthz")
            assert status == 200, body
        finally:
            for s in idle:
                s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(runtime: Any) -> None:
    with LocalServer(runtime, port=0, threads=2, idle_timeout_s=1) as server:
        server.start()
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(15)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # a slow-loris client: half a request, then nothing
        start = time.monotonic()
        assert s.recv(1024) == b"", "the server closed the connection"
        assert time.monotonic() - start < 14  # a bound for the test to end, not a timing claim
        s.close()


def test_a_second_server_never_steals_a_live_unix_socket(runtime: Any, socket_path: Path) -> None:
    with LocalServer(runtime, unix_socket=socket_path) as first:
        first.start()
        with pytest.raises(ConfigError, match="already listening"):
            LocalServer(runtime, unix_socket=socket_path)
        status, _, _ = Client(first).get("/healthz")
        assert status == 200, "the first server still owns its socket"


def test_a_stale_unix_socket_left_by_a_killed_server_is_replaced(runtime: Any, socket_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # the file stays; nobody listens
    with LocalServer(runtime, unix_socket=socket_path) as server:
        server.start()
        assert Client(server).get("/healthz")[0] == 200


def test_oversized_headers_are_refused(runtime: Any) -> None:
    with LocalServer(runtime, port=0, threads=2, max_header_bytes=4096) as server:
        server.start()
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        reply = s.recv(1024)
        s.close()
        assert reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.0 431") or b" 4" in reply[:12]


def test_limits_are_validated(runtime: Any) -> None:
    for kwargs in ({"connection_limit": 0}, {"idle_timeout_s": 0}, {"max_header_bytes": 10}):
        with pytest.raises(ConfigError):
            LocalServer(runtime, port=0, **kwargs)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 50_000 + b"]" * 50_000,  # nested 50,000 deep
        b'{"entity_rows": [{"user_id": ' + b"7" * 5000 + b"}]}",  # an integer Python refuses to parse
        b'{"entity_rows": [{"user_id": "\\ud800"}]}',  # a lone surrogate
    ],
    ids=["deep", "huge-int", "lone-surrogate"],
)
def test_hostile_json_bodies_are_400_not_500(runtime: Any, body: bytes) -> None:
    with LocalServer(runtime, port=0, threads=2) as server:
        server.start()
        status, _, reply = Client(server).request("POST", "/v1/predict/ctr", raw=body)
        assert 400 <= status < 500, reply
