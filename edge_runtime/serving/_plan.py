"""Per model version: everything ``predict`` needs, compiled once when a version becomes active."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from edge_runtime._config import ModelSettings, OnWrite, ServingMode
from edge_runtime.features import FeatureStore
from edge_runtime.models import ActiveModel
from edge_runtime.serving._cache import Dependency, ModelCache, OutputLayout
from edge_runtime.serving._inputs import InputPlan, view_tables

T = TypeVar("T")


@dataclass
class ModelPlan:
    """The compiled serving plan of one active model version."""

    active: ActiveModel
    settings: ModelSettings
    mode: ServingMode
    inputs: InputPlan | None
    layout: OutputLayout
    prediction_ref: str | None
    on_write: OnWrite
    #: precomputed mode: run the model for rows whose stored prediction is missing or stale
    fallback_to_model: bool = True
    deps: tuple[Dependency, ...] = ()
    #: views whose writes concern this model (for recompute-on-write)
    dep_views: frozenset[str] = frozenset()
    cache: ModelCache | None = None

    #: the model name and version (copied from ``active``: read on every prediction)
    name: str = ""
    version: int = 0

    def __post_init__(self) -> None:
        self.name = self.active.name
        self.version = self.active.version


def compile_plan(active: ActiveModel, settings: ModelSettings, store: FeatureStore) -> ModelPlan:
    """Compile the serving plan of ``active`` under the profile's ``settings``."""
    manifest = active.manifest
    serving = manifest.serving_defaults
    inputs = InputPlan(manifest, store) if manifest.features else None
    # profile > manifest > default, field by field: None means "not set" at each level.
    mode = settings.mode or serving.mode
    if mode is None:
        mode = ServingMode.ONLINE if inputs is not None else ServingMode.TENSORS
    prediction_ref = settings.prediction_feature or serving.prediction_feature
    on_write = _first(settings.on_write, serving.on_write, OnWrite.INVALIDATE)
    fallback_to_model = _first(settings.fallback_to_model, serving.fallback_to_model, True)
    fields = []
    for spec in active.backend.outputs:
        row_shape = tuple(d if d is not None else 1 for d in spec.shape[1:])
        fields.append((spec.name, np.dtype(spec.dtype), row_shape))
    deps: list[Dependency] = []
    dep_views: set[str] = set()
    if inputs is not None:
        keys = set(inputs.join_keys)
        for view_name in sorted({r.split(":", 1)[0] for r in inputs.store_refs}):
            for table in view_tables(store.get_view(view_name)):
                if set(table.keys) <= keys:
                    deps.append(Dependency(table=table.table, keys=table.keys, ops=table.ops))
                    dep_views.add(table.view)
    return ModelPlan(
        active=active,
        settings=settings,
        mode=mode,
        inputs=inputs,
        layout=OutputLayout(tuple(fields), status_width=len(inputs.refs) if inputs is not None else 0),
        prediction_ref=prediction_ref,
        on_write=on_write,
        fallback_to_model=fallback_to_model,
        deps=tuple(deps),
        dep_views=frozenset(dep_views),
    )


def _first(*values: T | None) -> T:
    """The first value that is set (the last argument is the default and always set)."""
    return next(v for v in values if v is not None)


def output_view_name(model: str) -> str:
    """The feature view ``batch_predict`` writes ``model``'s predictions to."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model) + "_predictions"
