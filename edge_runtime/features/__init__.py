"""On-device feature definitions and the SQLite online store.

Define entities and views in Python (or load them from TOML with :func:`load_definitions`), ``apply`` them to a
:class:`FeatureStore`, write rows with ``write_to_online_store``, push events with ``push_events`` and read
features with ``get_online_features`` — Feast's shapes, with TTL enforced on read, newest-event-wins upserts,
microsecond UTC timestamps and windowed stream aggregates. See docs/features.md.
"""

from __future__ import annotations

from ._definitions import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    RequestSource,
    StreamFeatureView,
    on_demand_feature_view,
)
from ._response import EntityRead, FieldStatus, OnlineResponse
from ._store import FeatureStore, WriteListener
from ._toml_defs import load_definitions

__all__ = [
    "Aggregation",
    "Entity",
    "EntityRead",
    "FeatureService",
    "FeatureStore",
    "FeatureView",
    "Field",
    "FieldStatus",
    "OnDemandFeatureView",
    "OnlineResponse",
    "RequestSource",
    "StreamFeatureView",
    "WriteListener",
    "load_definitions",
    "on_demand_feature_view",
]
