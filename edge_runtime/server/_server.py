"""Run the local API on waitress (a pure-Python production WSGI server) over TCP on localhost or a Unix socket."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime._errors import ConfigError, EdgeRuntimeError
from edge_runtime.server._app import DEFAULT_MAX_BODY, LocalApi

if TYPE_CHECKING:
    from edge_runtime.serving import EdgeRuntime

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
#: Open connections served at once. waitress's default (100) let 110 idle loopback connections lock every client
#: out; beyond the limit waitress stops accepting, so the limit is high and idle connections are closed early.
DEFAULT_CONNECTION_LIMIT = 512
#: Seconds a connection may sit without sending a complete request (waitress's default is 120).
DEFAULT_IDLE_TIMEOUT_S = 10
#: Request line plus headers (waitress's default is 256 KiB; our requests need a few hundred bytes).
DEFAULT_MAX_HEADER_BYTES = 16 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LocalServer:
    """The local API bound to a TCP port or a Unix socket, served by waitress.

    Binding happens in the constructor (so :attr:`port` is known before :meth:`run`, and ``port=0`` picks a free
    one). :meth:`run` blocks serving; :meth:`start` serves in a daemon thread; :meth:`stop` closes every socket.
    A host that is not loopback is refused unless ``allow_remote`` — the API has no authentication.
    """

    def __init__(
        self,
        runtime: EdgeRuntime,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        unix_socket: str | Path | None = None,
        allow_remote: bool = False,
        threads: int = 4,
        max_body: int = DEFAULT_MAX_BODY,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        try:
            from waitress import wasyncore
            from waitress.server import create_server  # lazy: only `serve` needs the server library
            from waitress.task import ThreadedTaskDispatcher
        except ImportError as exc:
            raise EdgeRuntimeError(
                "the local API needs waitress, which is not installed: pip install 'edge-runtime[serve]'"
            ) from exc
        if host == "localhost":
            host = "127.0.0.1"  # one socket: waitress would otherwise bind every address localhost resolves to
        if unix_socket is None and not allow_remote and not is_loopback(host):
            raise ConfigError(
                f"refusing to serve on {host!r}: the local API has no authentication; "
                "bind 127.0.0.1 or ::1, use a Unix socket, or pass --allow-remote behind your own access control",
                key="host",
                expected="a loopback address (127.0.0.1, ::1, localhost), a Unix socket, or --allow-remote",
                got=host,
            )
        if not 0 <= port <= 65535:
            raise ConfigError("port out of range", key="port", expected="0..65535", got=port)
        if threads < 1:
            raise ConfigError("threads must be at least 1", key="threads", expected=">= 1", got=threads)
        for key, value, low in (
            ("connection_limit", connection_limit, 1),
            ("idle_timeout_s", idle_timeout_s, 1),
            ("max_header_bytes", max_header_bytes, 1024),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key} is too small", key=key, expected=f"an int >= {low}", got=value)
        self.runtime = runtime
        self.unix_socket = Path(unix_socket) if unix_socket is not None else None
        hosts = None if (allow_remote or self.unix_socket is not None) else ("localhost", "127.0.0.1", "::1", host)
        self.app = LocalApi(runtime, max_body=max_body, allowed_hosts=hosts)
        options: dict[str, Any] = {
            "threads": threads,
            "ident": "edge-runtime",
            "clear_untrusted_proxy_headers": True,
            # waitress buffers a whole body before the app sees it: its limit is what protects memory.
            "max_request_body_size": max_body,
            "max_request_header_size": max_header_bytes,
            "connection_limit": connection_limit,
            "channel_timeout": idle_timeout_s,
            "cleanup_interval": max(1, min(30, idle_timeout_s // 2)),
            # select() fails on descriptors >= 1024, which a high connection limit can reach.
            "asyncore_use_poll": True,
        }
        # Our own socket map and dispatcher: when binding fails, waitress leaves both behind (open sockets,
        # worker threads); with them in hand they can be closed.
        sock_map: dict[int, Any] = {}
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        try:
            if self.unix_socket is not None:
                _remove_stale_socket(self.unix_socket)
                self._server: Any = create_server(
                    self.app,
                    map=sock_map,
                    _dispatcher=dispatcher,
                    unix_socket=str(self.unix_socket),
                    unix_socket_perms="600",
                    **options,
                )
            else:
                self._server = create_server(
                    self.app, map=sock_map, _dispatcher=dispatcher, host=host, port=port, **options
                )
        except OSError as exc:
            dispatcher.shutdown()
            wasyncore.close_all(sock_map)
            where = str(self.unix_socket) if self.unix_socket is not None else f"{host}:{port}"
            raise ConfigError(
                f"cannot listen on {where}: {exc.strerror or exc}",
                key="unix_socket" if self.unix_socket is not None else "port",
                expected="a free port or a writable socket path",
                got=where,
            ) from exc
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int | None:
        """The TCP port listened on (None on a Unix socket)."""
        return None if self.unix_socket is not None else int(self._server.effective_port)

    @property
    def url(self) -> str:
        """Where clients reach the API: ``http://host:port`` or ``unix:/path``."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        host = str(self._server.effective_host)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def run(self) -> None:
        """Serve until :meth:`stop` (or Ctrl-C / SIGTERM in the CLI)."""
        try:
            self._server.run()
        finally:
            self.stop()

    def start(self) -> LocalServer:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._server.run, name="edge-runtime-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, finish the worker threads, close the sockets and remove the Unix socket file."""
        if self._stopped:
            return
        self._stopped = True
        from waitress import wasyncore

        server = self._server
        server.task_dispatcher.shutdown()  # lets in-flight requests finish
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            # Close the sockets in the loop's own thread (woken by the trigger): closing them under a running
            # select() from here fails it with EBADF, and the loop would otherwise notice only at its timeout.
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            thread.join(timeout=10)
        else:
            wasyncore.close_all(server._map)
        if self.unix_socket is not None:
            try:
                os.unlink(self.unix_socket)
            except FileNotFoundError:
                pass

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file left behind by a server that was killed; refuse when a live server listens on it
    (unlinking would orphan that server: its clients could no longer reach it)."""
    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: stale
        return
    except OSError:
        pass  # e.g. a timeout: something holds it; do not take it
    finally:
        probe.close()
    raise ConfigError(
        f"another server is already listening on {path}",
        key="unix_socket",
        expected="a socket path no running server uses (stop the other server, or choose another path)",
        got=str(path),
    )
