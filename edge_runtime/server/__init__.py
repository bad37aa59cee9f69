"""The local HTTP API (``edge-runtime serve``) for device apps not written in Python.

:class:`LocalApi` is the WSGI application (predict, feature read/write, health, Prometheus metrics);
:class:`LocalServer` runs it on waitress over TCP on localhost or a Unix socket. Needs the ``serve`` extra
(``pip install 'edge-runtime[serve]'``). See docs/local-api.md.
"""

from edge_runtime.server._app import ApiError, LocalApi
from edge_runtime.server._metrics import LATENCY_BUCKETS, ApiMetrics
from edge_runtime.server._server import DEFAULT_HOST, DEFAULT_PORT, LocalServer, is_loopback

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LATENCY_BUCKETS",
    "ApiError",
    "ApiMetrics",
    "LocalApi",
    "LocalServer",
    "is_loopback",
]
