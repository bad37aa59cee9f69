"""The serving modes that read features: online inference, cached predictions, precomputed predictions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime._config import ServingMode
from edge_runtime._errors import ConfigError, ModelInputError
from edge_runtime.features import FieldStatus
from edge_runtime.features._entity_rows import entity_columns, key_column
from edge_runtime.serving._inputs import merge_request
from edge_runtime.serving._plan import ModelPlan
from edge_runtime.serving._prediction import STATUS_INDEX, InputStatus, Prediction

if TYPE_CHECKING:
    from edge_runtime.serving._runtime import EdgeRuntime

_ONLINE = ServingMode.ONLINE.value
_CACHED = ServingMode.CACHED.value
_PRECOMPUTED = ServingMode.PRECOMPUTED.value


def _inputs_of(plan: ModelPlan) -> Any:
    if plan.inputs is None:
        raise ModelInputError(
            f"model {plan.name!r} v{plan.version} lists no features in its manifest; pass inputs=... (mode 'tensors')"
        )
    return plan.inputs


def _empty_outputs(plan: ModelPlan) -> dict[str, np.ndarray]:
    return {name: np.empty((0, *shape), dtype=dt) for name, dt, shape in plan.layout.fields}


def predict_online(plan: ModelPlan, entity_rows: object, request_data: object) -> Prediction:
    """Look up the features, assemble the input in the manifest's order, run the model once for all rows."""
    inputs = _inputs_of(plan)
    x, statuses, n = inputs.gather(entity_rows, request_data)
    outputs = plan.active.run({inputs.input_name: x}) if n else _empty_outputs(plan)
    return Prediction(
        model=plan.name,
        version=plan.version,
        mode=_ONLINE,
        outputs=outputs,
        feature_status=statuses,
        cached=[False] * n,
    )


def canonical_request(cols: dict[str, list[Any]], keys: tuple[str, ...], i: int) -> str:
    """The part of row ``i`` that is not a join key, as canonical JSON ('' when there is none): request data
    changes the prediction, so it keys the cache together with the join keys."""
    if len(cols) == len(keys):
        return ""
    extra = {k: v[i] for k, v in cols.items() if k not in keys}
    if not extra:
        return ""
    return json.dumps(extra, sort_keys=True, separators=(",", ":"), default=str)


def predict_cached(rt: EdgeRuntime, plan: ModelPlan, entity_rows: object, request_data: object) -> Prediction:
    """Serve cached predictions; compute the misses in one batch and cache them (see ``_cache``)."""
    inputs = plan.inputs
    if inputs is None:
        inputs = _inputs_of(plan)  # raises the error that names the problem
    cache = plan.cache or rt.cache_for(plan)
    version = plan.version
    keys = inputs.join_keys
    # The hot path: one entity row holding exactly the join keys, already cached.
    if request_data is None and type(entity_rows) is list and len(entity_rows) == 1:
        row = entity_rows[0]
        if type(row) is dict and len(row) == len(keys):
            key = (row.get(keys[0]),) if len(keys) == 1 else tuple([row.get(k) for k in keys])
            # Only plain ints and strings here: sqlite3 would bind a numpy integer as a BLOB (buffer protocol),
            # which no trigger would ever match. Anything else is converted on the general path below.
            for v in key:
                t = type(v)
                if t is not int and t is not str:
                    break
            else:
                blob = cache.get(key, "", version, round(rt._clock() * 1_000_000))
                if blob is not None:
                    outputs, status = plan.layout.unpack_one(blob)
                    return Prediction(plan.name, version, _CACHED, outputs, (inputs.refs, [status]), [True])
    n, cols = entity_columns(entity_rows if entity_rows is not None else [{}])
    if request_data is not None:
        merge_request(cols, n, request_data)
    # The stored form of each key column (numpy integers become ints; a bad key names its row), exactly as the
    # feature store keys its rows, so cached rows and invalidation triggers agree.
    keycols = [key_column(cols, k, n) if k in cols else None for k in keys]
    now = rt.now_us()
    blobs: list[bytes | None] = [None] * n
    row_keys: list[tuple[tuple[Any, ...], str] | None] = [None] * n
    for i in range(n):
        key = tuple(kc[i] if kc is not None else None for kc in keycols)
        if None in key:
            continue  # without every join key the row cannot be named in the cache
        row_keys[i] = (key, canonical_request(cols, keys, i))
    wanted = [rk for rk in row_keys if rk is not None]
    if wanted:
        found = cache.get_many(wanted, version, now)
        for i, rk in enumerate(row_keys):
            if rk is not None:
                blobs[i] = found.get(rk)
    miss = [i for i in range(n) if blobs[i] is None]
    if miss:
        seen = rt.prediction_cache.data_version()
        m = len(miss)
        sub = {k: [v[i] for i in miss] for k, v in cols.items()} if m < n else cols
        x, statuses, valid_until = inputs.gather_columns(m, sub, now)
        outputs = plan.active.run({inputs.input_name: x})
        status_rows = [bytes([STATUS_INDEX[statuses[r][j]] for r in inputs.refs]) for j in range(m)]
        items = []
        for j, i in enumerate(miss):
            blob = plan.layout.pack(outputs, j, status_rows[j])
            blobs[i] = blob
            rk = row_keys[i]
            if rk is not None:
                items.append((rk[0], rk[1], blob, valid_until[j]))
        cache.put_many(items, version, seen_version=seen)
    unpacked, codes = plan.layout.unpack(blobs)  # type: ignore[arg-type]
    missed = set(miss)
    return Prediction(
        model=plan.name,
        version=version,
        mode=_CACHED,
        outputs=unpacked,
        feature_status=(inputs.refs, codes),
        cached=[i not in missed for i in range(n)],
    )


_PRECOMPUTED_STATUS = {
    FieldStatus.PRESENT: InputStatus.PRESENT,
    FieldStatus.NOT_FOUND: InputStatus.MISSING,
    FieldStatus.OUTSIDE_MAX_AGE: InputStatus.EXPIRED,
}


def predict_precomputed(rt: EdgeRuntime, plan: ModelPlan, entity_rows: object, request_data: object) -> Prediction:
    """Read the prediction from its feature view; with ``fallback_to_model``, run the model for rows whose stored
    prediction is missing or stale. ``cached[i]`` is True where the stored prediction was served."""
    ref = plan.prediction_ref
    if not ref:
        raise ConfigError(
            f"model {plan.name!r} is served in precomputed mode but names no prediction feature",
            key="prediction_feature",
            expected="'view:feature' in the profile's [[models]] entry or the manifest's serving section",
        )
    n, cols = entity_columns(entity_rows if entity_rows is not None else [{}])
    if request_data is not None:
        merge_request(cols, n, request_data)
    response = rt.features.get_online_features([ref], cols, full_feature_names=True)
    name = response.feature_names[0]
    values = response.values(name)
    statuses = [_PRECOMPUTED_STATUS[s] for s in response.statuses[name]]
    outputs = {
        out: np.full((n, *shape), np.nan, dtype=np.float32 if dt.kind != "f" else dt)
        for out, dt, shape in plan.layout.fields
    }
    first = next(iter(outputs))
    target = outputs[first]
    for i, v in enumerate(values):
        if v is not None:
            target[i] = np.asarray(v, dtype=target.dtype).reshape(target.shape[1:])
    stale = [i for i, v in enumerate(values) if v is None]
    if stale and plan.fallback_to_model and plan.inputs is not None:
        sub = {k: [v[i] for i in stale] for k, v in cols.items()}
        fresh = predict_online(plan, sub, None)
        for out, arr in fresh.outputs.items():
            outputs[out][stale] = arr
    stale_set = set(stale)
    return Prediction(
        model=plan.name,
        version=plan.version,
        mode=_PRECOMPUTED,
        outputs=outputs,
        feature_status={ref: statuses},
        cached=[i not in stale_set for i in range(n)],
    )
