"""A real runtime (SQLite files, the committed int8 model) behind the real local API server, over TCP and Unix."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _api_helpers import Client, seed_runtime

from edge_runtime import ModelSettings
from edge_runtime.server import LocalServer


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    rt = seed_runtime(
        tmp_path / "data", models=(ModelSettings(name="ctr", prediction_feature="user_scores:ctr_prediction"),)
    )
    yield rt
    rt.close()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A Unix socket path in a fresh directory under /tmp (pytest's tmp_path can exceed the 108-byte AF_UNIX
    limit), removed afterwards whatever happened."""
    directory = Path(tempfile.mkdtemp(prefix="er-api-"))
    try:
        yield directory / "api.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["tcp", "unix"])
def client(request: pytest.FixtureRequest, runtime: Any, socket_path: Path) -> Iterator[Client]:
    """A client of a server on a free TCP port, and of one on a Unix socket (every test runs against both)."""
    if request.param == "tcp":
        server = LocalServer(runtime, port=0, threads=2)
    else:
        server = LocalServer(runtime, unix_socket=socket_path, threads=2)
    server.start()
    try:
        yield Client(server)
    finally:
        server.stop()
