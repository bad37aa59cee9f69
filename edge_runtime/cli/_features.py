"""`edge-runtime features` commands."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `features` commands to the top-level parser."""
