"""The ``edge-runtime`` command line: a thin layer that parses, calls the library, and prints.

Each command group lives in its own module with a ``register(subparsers)`` function; :data:`GROUPS` lists them.
Library imports happen inside the handlers so ``edge-runtime --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge_runtime._errors import EdgeRuntimeError

#: Command-group modules, in the order ``--help`` shows them.
GROUPS: tuple[str, ...] = (
    "edge_runtime.cli._features",
    "edge_runtime.cli._models",
    "edge_runtime.cli._keys",
    "edge_runtime.cli._runtime",
    "edge_runtime.cli._demo",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by :func:`main` and by the test that checks every command's help)."""
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Run quantized ML models on a device with a local SQLite feature cache.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in GROUPS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``edge-runtime``; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.handler(args)
    except EdgeRuntimeError as exc:
        print(f"edge-runtime: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`edge-runtime status | head`): not an error. Point stdout at devnull so the
        # interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(status or 0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-runtime")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"
