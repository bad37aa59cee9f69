"""`edge-runtime models` commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `models` commands to the top-level parser."""
