"""Per-device connectivity faults: a TCP proxy per device between the device and the broker.

One asyncio loop in one background thread serves every device's proxy (hundreds of devices cost one thread, not
hundreds). A device connects to its proxy's port; the proxy opens a connection to the broker for each device
connection and pumps bytes both ways. :meth:`ProxyHub.cut` breaks one device's connectivity — ``"reset"`` closes
its open connections and refuses new ones (the device notices at once), ``"blackhole"`` keeps the sockets open but
forwards nothing (the device notices only when its keepalive expires, as behind a dead NAT) — and
:meth:`ProxyHub.restore` heals it. ``latency`` delays every chunk by a fixed time in each direction without
reordering or throttling the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._errors import FleetError

_T = TypeVar("_T")
_READ = 64 * 1024
_CALL_TIMEOUT = 10.0
CUT_MODES = ("reset", "blackhole")


@dataclass(frozen=True)
class Upstream:
    """Where a proxy forwards to: a TCP host and port, or a Unix socket path (``port`` 0)."""

    host: str
    port: int = 0
    unix: bool = False

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        """``mqtt://host:port`` or ``unix:///path`` (TLS is end to end, so ``mqtts://`` works through it too)."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            path = parts.path or parts.netloc
            if not path:
                raise FleetError(f"broker URL {url!r} has no socket path")
            return cls(path, 0, True)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise FleetError(f"broker URL {url!r} is not mqtt://host:port, mqtts://host:port or unix:///path")
        return cls(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Pipe:
    """One device connection: the device side and the broker side."""

    down: asyncio.StreamWriter  # to the device
    up: asyncio.StreamWriter | None = None  # to the broker
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.down, self.up):
            if writer is not None:
                _abort(writer)
        for task in self.tasks:
            task.cancel()


@dataclass
class DeviceProxy:
    """The proxy of one device: its listening port, whether it is cut, its latency and counters."""

    name: str
    port: int
    upstream: Upstream
    cut_mode: str | None = None
    latency_s: float = 0.0
    connections: int = 0
    refused: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cut_at: float | None = None
    pipes: set[Any] = field(default_factory=set, repr=False)
    server: asyncio.AbstractServer | None = field(default=None, repr=False)
    #: set while not cut; blackholed pumps wait on it
    flowing: asyncio.Event | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The URL the device should use instead of the broker's."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """True while the device has no connectivity."""
        return self.cut_mode is not None


class ProxyHub:
    """Every device's fault-injecting proxy, served by one asyncio loop in one daemon thread.

    ``add(name, upstream)`` opens a listener on a free 127.0.0.1 port and returns its :class:`DeviceProxy`
    (``proxy.url`` is what the device connects to). Methods are thread-safe and return once done. Use it as a
    context manager or call :meth:`close`.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fleet-proxy", daemon=True)
        self._proxies: dict[str, DeviceProxy] = {}
        self._closed = False
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._closed:
            coro.close()
            raise FleetError("the proxy hub is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    # --- public API -------------------------------------------------------------------------------------------

    def add(self, name: str, upstream: Upstream | str) -> DeviceProxy:
        """Start a proxy for ``name`` forwarding to ``upstream`` (an :class:`Upstream` or a broker URL)."""
        if name in self._proxies:
            raise FleetError(f"a proxy for {name!r} exists already")
        up = upstream if isinstance(upstream, Upstream) else Upstream.from_url(upstream)
        proxy = self._call(self._add(name, up))
        self._proxies[name] = proxy
        return proxy

    def get(self, name: str) -> DeviceProxy:
        """The proxy of ``name``; FleetError naming the known ones when there is none."""
        try:
            return self._proxies[name]
        except KeyError:
            known = ", ".join(sorted(self._proxies)[:10])
            raise FleetError(
                f"no proxy for device {name!r} (known: {known}{', ...' if len(self._proxies) > 10 else ''})"
            ) from None

    def cut(self, name: str, mode: str = "reset") -> None:
        """Take ``name`` offline: ``"reset"`` closes its connections and refuses new ones; ``"blackhole"`` keeps
        them open but forwards nothing (and new connections hang the same way)."""
        if mode not in CUT_MODES:
            raise FleetError(f"cut mode must be one of {', '.join(CUT_MODES)}, got {mode!r}")
        self._call(self._cut(self.get(name), mode))

    def restore(self, name: str) -> None:
        """Give ``name`` its connectivity back (blackholed connections resume; reset ones reconnect)."""
        self._call(self._restore(self.get(name)))

    def set_latency(self, name: str, seconds: float) -> None:
        """Delay every chunk of ``name``'s traffic by ``seconds`` each way (0 = none)."""
        if not 0 <= seconds <= 60:
            raise FleetError(f"latency must be 0..60 seconds, got {seconds}")
        self.get(name).latency_s = float(seconds)

    def drop_connections(self, name: str) -> int:
        """Close ``name``'s open connections once (a blip: it may reconnect at once). Returns how many."""
        return self._call(self._drop(self.get(name)))

    def remove(self, name: str) -> None:
        """Stop ``name``'s proxy and close its connections."""
        proxy = self._proxies.pop(name, None)
        if proxy is not None:
            self._call(self._remove(proxy))

    @property
    def proxies(self) -> dict[str, DeviceProxy]:
        """Every proxy by device name."""
        return dict(self._proxies)

    def close(self) -> None:
        """Stop every proxy and the loop thread."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ProxyHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the loop ------------------------------------------------------------------------------------------

    async def _add(self, name: str, upstream: Upstream) -> DeviceProxy:
        proxy = DeviceProxy(name, 0, upstream, flowing=asyncio.Event())
        assert proxy.flowing is not None
        proxy.flowing.set()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(proxy, reader, writer)

        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=256)
        proxy.server = server
        proxy.port = int(server.sockets[0].getsockname()[1])
        return proxy

    async def _serve(self, proxy: DeviceProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if proxy.cut_mode == "reset":
            proxy.refused += 1
            _abort(writer)
            return
        pipe = _Pipe(writer)
        proxy.pipes.add(pipe)
        try:
            if proxy.cut_mode == "blackhole":
                assert proxy.flowing is not None
                await proxy.flowing.wait()
            try:
                if proxy.upstream.unix:
                    up_reader, up_writer = await asyncio.open_unix_connection(proxy.upstream.host)
                else:
                    up_reader, up_writer = await asyncio.open_connection(proxy.upstream.host, proxy.upstream.port)
            except OSError:
                _abort(writer)  # the broker is down: the device sees a refused connection, as without a proxy
                return
            upsock = up_writer.get_extra_info("socket")
            if upsock is not None and not proxy.upstream.unix:
                upsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe.up = up_writer
            proxy.connections += 1
            pipe.tasks = [
                asyncio.ensure_future(self._pump(proxy, reader, up_writer, upward=True)),
                asyncio.ensure_future(self._pump(proxy, up_reader, writer, upward=False)),
            ]
            # Either direction ending ends the connection, as a real socket would.
            _done, pending = await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
        except asyncio.CancelledError:
            pass
        finally:
            pipe.abort()
            proxy.pipes.discard(pipe)

    async def _pump(
        self, proxy: DeviceProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upward: bool
    ) -> None:
        delayed: asyncio.Queue[tuple[float, bytes]] | None = None
        sender: asyncio.Task[None] | None = None
        assert proxy.flowing is not None
        try:
            while True:
                # Blackholed: neither read nor write, so bytes back up in the kernel as behind a dead route; TCP
                # would retransmit them, so nothing is dropped from the middle of a stream.
                await proxy.flowing.wait()
                data = await reader.read(_READ)
                if not data:
                    return
                await proxy.flowing.wait()
                if upward:
                    proxy.bytes_up += len(data)
                else:
                    proxy.bytes_down += len(data)
                if proxy.latency_s > 0 or delayed is not None:
                    if delayed is None:
                        delayed = asyncio.Queue()
                        sender = asyncio.ensure_future(self._delayed_send(delayed, writer))
                    if sender is not None and sender.done():
                        return  # the writer failed: the connection is gone
                    delayed.put_nowait((time.monotonic() + proxy.latency_s, data))
                    continue
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            return
        finally:
            if sender is not None:
                sender.cancel()

    async def _delayed_send(self, q: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        # One sender per direction keeps the order; each chunk waits until its own due time, so latency does not
        # become a bandwidth limit.
        with contextlib.suppress(OSError):
            while True:
                due, data = await q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

    async def _cut(self, proxy: DeviceProxy, mode: str) -> None:
        assert proxy.flowing is not None
        proxy.cut_mode = mode
        proxy.cut_at = time.monotonic()
        proxy.flowing.clear()
        if mode == "reset":
            await self._drop(proxy)

    async def _restore(self, proxy: DeviceProxy) -> None:
        assert proxy.flowing is not None
        proxy.cut_mode = None
        proxy.cut_at = None
        proxy.flowing.set()

    async def _drop(self, proxy: DeviceProxy) -> int:
        pipes = list(proxy.pipes)
        for pipe in pipes:
            pipe.abort()
        return len(pipes)

    async def _remove(self, proxy: DeviceProxy) -> None:
        if proxy.server is not None:
            proxy.server.close()
        await self._drop(proxy)
        if proxy.flowing is not None:
            proxy.flowing.set()

    async def _close_all(self) -> None:
        for proxy in list(self._proxies.values()):
            await self._remove(proxy)
        self._proxies.clear()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset, not a graceful FIN: a cut link does not say goodbye."""
    transport = writer.transport
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    transport.abort()
