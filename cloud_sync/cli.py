"""The ``cloud-sync`` command line (cloud publisher, device agent, broker, fleet).

Each command registers itself on the subparsers in a ``_register_*`` function; handlers import the library
lazily so ``cloud-sync --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

from ._errors import CloudSyncError


def _register_broker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run a local mosquitto with a generated config (for the demo and manual testing)",
        description=(
            "Start mosquitto in the foreground with a generated configuration: a free port on 127.0.0.1 (or a "
            "Unix socket), a password file with a cloud user and one user per device, the per-device ACL of the "
            "sync protocol, persistence and optional TLS with a freshly generated CA. Prints the URL and the "
            "path of a JSON credentials file, then runs until Ctrl-C. --embedded runs amqtt instead "
            "(MQTT 3.1.1, anonymous, no ACL: demo only)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free port)")
    p.add_argument("--unix-socket", action="store_true", help="listen on a Unix socket instead of TCP")
    p.add_argument("--tls", action="store_true", help="serve TLS with a CA and server certificate made on the spot")
    p.add_argument("--prefix", default="edge", help="topic prefix the ACL is written for (default edge)")
    p.add_argument(
        "--device", action="append", default=[], metavar="ID", help="create a broker user for this device (repeat)"
    )
    p.add_argument("--max-queued-messages", type=int, default=1000, help="per-client queue limit (default 1000)")
    p.add_argument("--max-packet-size", type=int, default=0, help="largest MQTT packet in bytes (0: default)")
    p.add_argument(
        "--dir",
        default=None,
        help="keep config, passwords, persistence and log in this directory (default: a temp dir removed on exit)",
    )
    p.add_argument("--credentials-file", default=None, help="where to write the JSON credentials file")
    p.add_argument("--embedded", action="store_true", help="run the amqtt embedded broker instead of mosquitto")
    p.set_defaults(handler=_broker)


def _broker(args: argparse.Namespace) -> int:
    with _sigterm_as_interrupt():
        try:
            return _run_broker(args)
        except KeyboardInterrupt:  # during startup or shutdown: the with blocks already cleaned up
            return 0


def _run_broker(args: argparse.Namespace) -> int:
    from .broker import BrokerConfig, EmbeddedBroker, Mosquitto

    if args.embedded:
        embedded = EmbeddedBroker(host=args.host, port=args.port)
        with embedded:
            print(f"url: {embedded.url}")
            print("auth: anonymous (amqtt, MQTT 3.1.1, no ACL; demo only)")
            sys.stdout.flush()
            return _serve(lambda: embedded.running)
    config = BrokerConfig(
        prefix=args.prefix,
        host=args.host,
        port=args.port,
        unix_socket=args.unix_socket,
        tls=args.tls,
        devices=tuple(args.device),
        max_queued_messages=args.max_queued_messages,
        max_packet_size=args.max_packet_size,
    )
    broker = Mosquitto(config, directory=args.dir)
    with broker:
        creds = broker.write_credentials_file(args.credentials_file)
        print(f"url: {broker.url}")
        print(f"credentials: {creds}")
        if broker.ca_file:
            print(f"ca_file: {broker.ca_file}")
        print(f"log: {broker.log_path}")
        print(f"users: {', '.join(broker.credentials)}")
        sys.stdout.flush()
        status = _serve(lambda: broker.running)
        if status:
            raise CloudSyncError(f"mosquitto exited unexpectedly; see {broker.log_path}")
        return 0


def _serve(alive: Callable[[], bool]) -> int:
    """Block until Ctrl-C or SIGTERM (0) or until the broker dies (1)."""
    try:
        while alive():
            time.sleep(0.2)
        return 1
    except KeyboardInterrupt:
        return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``with`` blocks stop the broker (it runs in its own session and
    would otherwise outlive us). Installed before the broker starts: a SIGTERM right after the URL is printed
    must not kill the process with the default action."""

    def on_term(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _register_publisher(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``publish``, ``release``, ``cloud`` and ``fleet``: the cloud publisher's commands (cloud_sync.publisher)."""
    from .publisher._cli import register

    register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The full ``cloud-sync`` argument parser."""
    parser = argparse.ArgumentParser(prog="cloud-sync", description="Sync devices with the cloud over MQTT.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _register_broker(sub)
    _register_publisher(sub)
    from .agent._cli import register as _register_agent  # the agent's handler imports the runtime lazily

    _register_agent(sub)
    from .fleet._cli import register as _register_simulate  # the fleet simulator; imports it lazily too

    _register_simulate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cloud-sync``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CloudSyncError as exc:
        print(f"cloud-sync: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
