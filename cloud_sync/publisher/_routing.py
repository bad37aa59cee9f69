"""Routing rows to devices: an entity→device mapping (callable or dict) or a column naming each row's device."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cloud_sync._errors import ProtocolError, PublisherError
from cloud_sync.protocol import Column, validate_device_id

#: How rows find their device: a column name, ``{entity key: device}`` or ``f(entity dict) -> device``. An entity
#: key is the join key's value, or a tuple of the values when the view has several join keys.
Route = str | Mapping[Any, str] | Callable[[dict[str, Any]], str | None]


def route_rows(
    columns: Mapping[str, Column], route: Route, join_keys: tuple[str, ...], *, what: str
) -> tuple[dict[str, list[int]], list[int], dict[str, Column]]:
    """Group row indices by device: ``({device: [row, ...]}, unrouted rows, columns without a route column)``.

    ``what`` names the column set in errors (``rows``/``tombstones``).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    devices: list[Any]
    if isinstance(route, str):
        if route not in columns:
            raise PublisherError(f"the route column {route!r} is not among the {what} columns {list(columns)}")
        devices = _plain(columns[route])
        columns = {k: c for k, c in columns.items() if k != route}
    else:
        missing = [k for k in join_keys if k not in columns]
        if missing:
            raise PublisherError(f"the {what} lack the join key column(s) {missing} needed to route them")
        keys = list(zip(*(_plain(columns[k]) for k in join_keys), strict=True)) if join_keys else [()] * n
        if isinstance(route, Mapping):
            devices = [route.get(k[0] if len(k) == 1 else k) for k in keys]
        elif callable(route):
            devices = [route(dict(zip(join_keys, k, strict=True))) for k in keys]
        else:
            raise PublisherError(
                f"route must be a column name, a dict of entity -> device or a callable, got {type(route).__name__}"
            )
    groups: dict[str, list[int]] = {}
    unrouted: list[int] = []
    checked: set[str] = set()
    for i, device in enumerate(devices):
        if device is None:
            unrouted.append(i)
            continue
        if device not in checked:
            try:
                validate_device_id(device)
            except ProtocolError as exc:
                raise PublisherError(f"{what} row {i} routes to an invalid device: {exc}") from None
            checked.add(device)
        groups.setdefault(device, []).append(i)
    return groups, unrouted, dict(columns)


def gather(columns: Mapping[str, Column], rows: list[int]) -> dict[str, Column]:
    """The given rows of every column, in order."""
    idx = np.asarray(rows, dtype=np.intp)
    out = {}
    for name, col in columns.items():
        if isinstance(col.values, np.ndarray):
            nulls = col.nulls[idx] if col.nulls is not None else None
            out[name] = Column(name, col.dtype, col.values[idx], nulls if nulls is not None and nulls.any() else None)
        else:
            out[name] = Column(name, col.dtype, [col.values[i] for i in rows])
    return out


def _plain(col: Column) -> list[Any]:
    """Python values of a column (timestamps as epoch µs), None where missing."""
    values = col.values.tolist() if isinstance(col.values, np.ndarray) else list(col.values)
    if col.nulls is not None:
        values = [None if m else v for v, m in zip(values, col.nulls.tolist(), strict=True)]
    return values
