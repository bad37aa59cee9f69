"""The exception hierarchy of ``cloud_sync``: every error it raises on purpose derives from CloudSyncError."""

from __future__ import annotations


class CloudSyncError(Exception):
    """Root of every error raised by cloud_sync."""

    exit_code: int = 1
