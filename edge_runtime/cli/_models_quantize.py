"""`edge-runtime models quantize`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `quantize` command to the `models` group's subparsers."""
