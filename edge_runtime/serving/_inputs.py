"""Turning entity rows and request data into a model's input matrix, with a status per input feature.

An :class:`InputPlan` is compiled once per model version from its manifest: which refs the feature store
serves (batch views, stream aggregates, on-demand views — in one ``get_online_features`` call), which come
straight from the request (``request:name``), and the default / mean / std of each column. ``gather`` then does
one store read and builds the float32 matrix in the manifest's order, substituting defaults for missing or
expired values and standardising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime._errors import ModelInputError
from edge_runtime.features import FeatureStore, FeatureView, FieldStatus, OnDemandFeatureView, StreamFeatureView
from edge_runtime.features._entity_rows import entity_columns
from edge_runtime.models import Manifest

from ._prediction import InputStatus

REQUEST_VIEW = "request"
_PRESENT, _DEFAULTED, _EXPIRED = InputStatus.PRESENT, InputStatus.DEFAULTED, InputStatus.EXPIRED
_F_PRESENT, _F_NOT_FOUND = FieldStatus.PRESENT, FieldStatus.NOT_FOUND
_SMALL = 8  # up to this many rows, plain Python beats numpy's per-call overhead
#: How long a prediction fed by stream aggregates stays valid: their windows slide with time, so a value can
#: change without any write. A push of events for the entity invalidates it at once regardless.
STREAM_MAX_AGE_US = 5_000_000
FOREVER_US = 2**62


class InputPlan:
    """How to build the first input of one model version from the feature store and the request."""

    def __init__(self, manifest: Manifest, store: FeatureStore) -> None:
        self.manifest = manifest
        self.refs = [f.ref for f in manifest.features]
        if not self.refs:
            raise ModelInputError(
                f"model {manifest.name!r} v{manifest.version} lists no features in its manifest; "
                "pass tensors with inputs=... (mode 'tensors')"
            )
        self.input_name = manifest.inputs[0].name
        # (column position, ref) of refs the store serves, and of refs read from the request
        self.store_cols = [(i, r) for i, r in enumerate(self.refs) if not r.startswith(REQUEST_VIEW + ":")]
        self.request_cols = [
            (i, r.split(":", 1)[1]) for i, r in enumerate(self.refs) if r.startswith(REQUEST_VIEW + ":")
        ]
        self.store_refs = [r for _, r in self.store_cols]
        for ref in self.store_refs:
            view_name, feature = ref.split(":", 1)
            dtype = next((f.type for f in store.get_view(view_name).features if f.name == feature), None)
            if dtype is not None and not dtype.is_numeric:
                raise ModelInputError(
                    f"model {manifest.name!r} v{manifest.version}: feature {ref!r} is {dtype.name}; each column of "
                    "the input vector needs a scalar number (int64, float32, float64 or bool)",
                    input_name=self.input_name,
                )
        self.join_keys = _join_keys(store, {r.split(":", 1)[0] for r in self.store_refs})
        self.has_stream = any(
            t.stream for v in {r.split(":", 1)[0] for r in self.store_refs} for t in view_tables(store.get_view(v))
        )
        self.defaults = [f.default for f in manifest.features]
        self.means = [f.mean if f.mean is not None else 0.0 for f in manifest.features]
        self.stds = [f.std if f.std is not None else 1.0 for f in manifest.features]
        self._np = (
            np.array(self.defaults, dtype=np.float64),
            np.array(self.means, dtype=np.float64),
            np.array(self.stds, dtype=np.float64),
        )
        self._store = store

    def gather(
        self, entity_rows: object, request_data: object = None
    ) -> tuple[np.ndarray, dict[str, list[InputStatus]], int]:
        """``(matrix, statuses, n)`` for ``entity_rows`` (+ ``request_data``), in the manifest's column order."""
        if request_data is None and type(entity_rows) is list and len(entity_rows) == 1:
            row = entity_rows[0]
            if type(row) is dict:
                return self.gather_one(row)
        n, cols = entity_columns(entity_rows if entity_rows is not None else [{}])
        if request_data is not None:
            merge_request(cols, n, request_data)
        x, statuses, _ = self.gather_columns(n, cols, None)
        return x, statuses, n

    def gather_one(self, row: dict[str, Any]) -> tuple[np.ndarray, dict[str, list[InputStatus]], int]:
        """:meth:`gather` for one entity row (which may carry request values): the single-entity hot path."""
        values: list[Any] = [None] * len(self.refs)
        statuses: dict[str, list[InputStatus]] = {}
        if self.store_refs:
            read = self._store.read_entity(self.store_refs, row, full_feature_names=True)
            for (pos, ref), v, st in zip(self.store_cols, read.values, read.statuses, strict=True):
                values[pos] = v
                # identity tests: hashing an enum member runs Python code
                statuses[ref] = [_PRESENT if st is _F_PRESENT else (_DEFAULTED if st is _F_NOT_FOUND else _EXPIRED)]
        for pos, name in self.request_cols:
            v = row.get(name)
            values[pos] = v
            statuses[self.refs[pos]] = [_DEFAULTED if v is None else _PRESENT]
        return np.array([self.standard_row(values)], dtype=np.float32), {r: statuses[r] for r in self.refs}, 1

    def standard_row(self, values: Sequence[Any]) -> list[float]:
        """One row of raw values (None or NaN = use the default), defaulted and standardised, in plain Python:
        for a handful of rows this beats numpy's per-call overhead."""
        defaults, means, stds = self.defaults, self.means, self.stds
        row = []
        for j, v in enumerate(values):
            if v is None or (v.__class__ is float and math.isnan(v)):
                v = defaults[j]
            row.append((float(v) - means[j]) / stds[j])
        return row

    def gather_columns(
        self, n: int, cols: dict[str, list[Any]], now_us: int | None
    ) -> tuple[np.ndarray, dict[str, list[InputStatus]], list[int]]:
        """:meth:`gather` for ``n`` rows already given as columns. With ``now_us``, also return per row the moment
        (epoch µs) its inputs stop being what they are now: the earliest TTL expiry of a present value, or a short
        bound when stream aggregates (whose windows slide with time) feed it."""
        k = len(self.refs)
        raw: list[list[Any]] = [[None] * n for _ in range(k)]
        statuses: dict[str, list[InputStatus]] = {}
        valid_until: list[int] = []
        if now_us is not None:
            bound = now_us + STREAM_MAX_AGE_US if self.has_stream else FOREVER_US
            valid_until = [bound] * n
        if self.store_refs:
            # a dict with no columns would read as zero rows
            rows: object = cols if cols else [{}] * n
            response = self._store.get_online_features(self.store_refs, rows, full_feature_names=True)
            names = response.feature_names
            for (pos, ref), name in zip(self.store_cols, names, strict=True):
                values = raw[pos] = response.values(name)
                if None in values:  # safe: every input column is a scalar (checked when the plan was built)
                    expired = response.expired_rows(name)
                    statuses[ref] = [
                        _PRESENT if v is not None else (_EXPIRED if i in expired else _DEFAULTED)
                        for i, v in enumerate(values)
                    ]
                else:
                    statuses[ref] = [_PRESENT] * n
            if now_us is not None:
                for name in names:
                    for i, expires in enumerate(response.expiry_us(name)):
                        if expires is not None and expires < valid_until[i]:
                            valid_until[i] = expires
        for pos, name in self.request_cols:
            col = cols.get(name)
            ref = self.refs[pos]
            if col is None:
                raw[pos] = [None] * n
                statuses[ref] = [InputStatus.DEFAULTED] * n
            else:
                raw[pos] = col
                statuses[ref] = [InputStatus.DEFAULTED if v is None else InputStatus.PRESENT for v in col]
        return self.assemble(raw, n), {r: statuses[r] for r in self.refs}, valid_until

    def assemble(self, columns: Sequence[Sequence[Any]], n: int) -> np.ndarray:
        """The float32 ``(n, k)`` matrix from raw per-column values (None = use the default)."""
        if n <= _SMALL:
            rows = [self.standard_row([col[i] for col in columns]) for i in range(n)]
            return np.array(rows, dtype=np.float32).reshape(n, len(columns))
        x = np.empty((n, len(columns)), dtype=np.float64)
        for j, col in enumerate(columns):
            try:
                x[:, j] = np.array(col, dtype=np.float64)
            except (TypeError, ValueError):  # None in the column (or a non-number): go value by value
                x[:, j] = [np.nan if v is None else _number(v, self.refs[j]) for v in col]
        d_arr, m_arr, s_arr = self._np
        missing = np.isnan(x)
        if missing.any():
            x = np.where(missing, d_arr, x)
        return ((x - m_arr) / s_arr).astype(np.float32)


def _number(value: Any, ref: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelInputError(
            f"feature {ref!r} has value {value!r} ({type(value).__name__}); a model input needs a number"
        ) from None


@dataclass(frozen=True)
class ViewTable:
    """A table a view reads: its view, key columns, table name, which writes change it, and whether it is an
    event log (stream aggregates slide with time)."""

    view: str
    keys: tuple[str, ...]
    table: str
    ops: tuple[str, ...]
    stream: bool


def view_tables(view: object) -> list[ViewTable]:
    """The tables behind a view, following an on-demand view to its sources (request sources have none)."""
    if isinstance(view, StreamFeatureView):
        return [ViewTable(view.name, tuple(view.join_keys), f"ev__{view.source}", ("INSERT",), True)]
    if isinstance(view, OnDemandFeatureView):
        return [t for src in view.sources for t in view_tables(src)]
    if isinstance(view, FeatureView):
        return [ViewTable(view.name, tuple(view.join_keys), f"fv__{view.name}", ("INSERT", "UPDATE", "DELETE"), False)]
    return []


def _join_keys(store: FeatureStore, views: set[str]) -> tuple[str, ...]:
    keys: dict[str, None] = {}
    for view in sorted(views):
        for table in view_tables(store.get_view(view)):
            keys.update(dict.fromkeys(table.keys))
    return tuple(keys)


def merge_request(cols: dict[str, list[Any]], n: int, request_data: object) -> None:
    """Add request data to the entity columns: one dict for every row, a list of dicts, or a dict of columns."""
    if isinstance(request_data, Mapping):
        for key, value in request_data.items():
            if isinstance(value, (list, tuple, np.ndarray)) and len(value) == n and n != 1:
                cols[key] = list(value)
            else:
                cols[key] = [value] * n
        return
    if isinstance(request_data, Sequence) and not isinstance(request_data, (str, bytes)):
        if len(request_data) != n:
            raise ModelInputError(f"request_data has {len(request_data)} rows but there are {n} entity rows")
        names = dict.fromkeys(k for r in request_data for k in r)
        for key in names:
            cols[key] = [r.get(key) for r in request_data]
        return
    raise ModelInputError(f"request_data must be a dict or a list of dicts, got {type(request_data).__name__}")
