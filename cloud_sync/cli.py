"""The ``cloud-sync`` command line (cloud publisher, device agent, broker, fleet)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._errors import CloudSyncError


def build_parser() -> argparse.ArgumentParser:
    """The full ``cloud-sync`` argument parser."""
    parser = argparse.ArgumentParser(prog="cloud-sync", description="Sync devices with the cloud over MQTT.")
    parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cloud-sync``; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CloudSyncError as exc:
        print(f"cloud-sync: error: {exc}", file=sys.stderr)
        return exc.exit_code
