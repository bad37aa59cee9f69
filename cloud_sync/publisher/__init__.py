"""The cloud publisher: feature snapshots and deltas with a delta log and catch-ups, signed model releases with
chunk serving and self-halting canaries, a fleet ledger, and telemetry intake. See docs/publisher.md.

Names are loaded on first use, so ``import cloud_sync.publisher`` (and ``cloud-sync --help``) stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud_sync._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._config import CloudConfig, load_cloud_config
    from ._ledger import DeviceState
    from ._log import LOG_STORES, CatchUpPlan, DeltaLog, StreamInfo, TargetResult
    from ._publisher import CloudPublisher, PublishResult, ReleaseResult, fleet_status, list_releases
    from ._releases import Release, canary_rank
    from ._routing import Route
    from ._sources import read_columns

_LAZY = {
    "CatchUpPlan": "._log",
    "DeltaLog": "._log",
    "LOG_STORES": "._log",
    "CloudConfig": "._config",
    "CloudPublisher": "._publisher",
    "DeviceState": "._ledger",
    "PublishResult": "._publisher",
    "Release": "._releases",
    "ReleaseResult": "._publisher",
    "Route": "._routing",
    "StreamInfo": "._log",
    "TargetResult": "._log",
    "canary_rank": "._releases",
    "fleet_status": "._publisher",
    "list_releases": "._publisher",
    "load_cloud_config": "._config",
    "read_columns": "._sources",
}

# A literal list, so type checkers and readers see the API; tests/test_public_api.py pins it.
__all__ = [
    "LOG_STORES",
    "CatchUpPlan",
    "CloudConfig",
    "CloudPublisher",
    "DeltaLog",
    "DeviceState",
    "PublishResult",
    "Release",
    "ReleaseResult",
    "Route",
    "StreamInfo",
    "TargetResult",
    "canary_rank",
    "fleet_status",
    "list_releases",
    "load_cloud_config",
    "read_columns",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
