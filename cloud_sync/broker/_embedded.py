"""amqtt as a zero-install, in-process broker for the demo only (optional extra ``embedded-broker``).

Limits, measured: MQTT 3.1.1 only (no MQTT 5 session expiry or packet-size negotiation), anonymous access with no
ACL (any client can read any device's topics), no offline queue for anonymous clients, no persistence and no
TLS here. Never use it for tests of the protocol's guarantees; use :class:`~cloud_sync.broker.Mosquitto`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from cloud_sync._errors import BrokerError, BrokerNotInstalledError

from ._mosquitto import free_port

AMQTT_HINT = "install it with 'pip install edge-runtime[embedded-broker]' (or 'pip install amqtt')"


class EmbeddedBroker:
    """An amqtt broker running on its own event loop in a daemon thread; same host/port/url/stop as Mosquitto."""

    transport = "tcp"

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 10.0) -> None:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerNotInstalledError("amqtt", hint=AMQTT_HINT) from exc
        self._broker_cls = Broker
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker's thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> EmbeddedBroker:
        """Start serving; returns once the listener is bound."""
        if self.running:
            return self
        loop = asyncio.new_event_loop()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        # amqtt logs every connection at INFO; the demo's output should stay readable.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=loop.run_forever, name="amqtt-broker", daemon=True)
        self._thread.start()
        self._loop = loop

        async def boot() -> Any:
            broker = self._broker_cls(config, loop=loop)
            await broker.start()
            return broker

        try:
            self._broker = asyncio.run_coroutine_threadsafe(boot(), loop).result(self.start_timeout)
        except Exception as exc:  # includes concurrent.futures.TimeoutError
            self._halt_loop()
            raise BrokerError(f"amqtt did not start on {self.url}: {exc}") from exc
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the broker down and end its thread."""
        if self._loop is None:
            return
        if self._broker is not None:
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout)
            except Exception:  # a failed shutdown must not keep the thread alive
                logging.getLogger(__name__).warning("amqtt shutdown failed", exc_info=True)
            self._broker = None
        self._halt_loop(timeout)

    def close(self) -> None:
        """Same as :meth:`stop` (mirrors :class:`Mosquitto`)."""
        self.stop()

    def _halt_loop(self, timeout: float = 5.0) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
        if not loop.is_running():
            loop.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedBroker {self.url} {'running' if self.running else 'stopped'}>"
