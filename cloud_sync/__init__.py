"""cloud_sync: keeps devices' feature caches and models in sync with the cloud over MQTT."""

from __future__ import annotations

from ._errors import CloudSyncError

__all__ = ["CloudSyncError"]
