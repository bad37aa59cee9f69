"""Entity rows as the reads take them: a list of dicts or a dict of columns, turned into columns with each join
key in its stored form (numpy integers become ints; a missing or unusable key names its row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_runtime._errors import RowValidationError

from ._dtypes import check_key_value, texts_ok

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

ENTITY_ROWS = "entity_rows"


class EntityRowError(RowValidationError):
    """A bad entity row given to a read (a :class:`RowValidationError` without the write-only wording)."""

    def __init__(self, message: str, *, row: int | None, column: str | None) -> None:
        super().__init__(message, target=ENTITY_ROWS, row=row, column=column)
        where = ENTITY_ROWS
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        self.args = (f"{where}: {message}",)


def entity_columns(entity_rows: object) -> tuple[int, dict[str, list[Any]]]:
    """Entity rows (a list of dicts, a dict of columns, or one dict of scalars) as ``(n, columns)``."""
    if isinstance(entity_rows, list):
        n = len(entity_rows)
        if n == 1:
            row = entity_rows[0]
            if isinstance(row, Mapping):
                return 1, {k: [v] for k, v in row.items()}
        for i, r in enumerate(entity_rows):
            # the exact-type test first: isinstance against the Mapping ABC costs far more per row
            if type(r) is not dict and not isinstance(r, Mapping):
                raise EntityRowError(f"expected a dict per entity row, got {type(r).__name__}", row=i, column=None)
        names = list(dict.fromkeys(k for r in entity_rows for k in r))
        return n, {k: [r.get(k) for r in entity_rows] for k in names}
    if isinstance(entity_rows, Mapping):
        values = list(entity_rows.values())
        if values and not any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            return 1, {k: [v] for k, v in entity_rows.items()}
        cols: dict[str, list[Any]] = {}
        n = -1
        for k, v in entity_rows.items():
            col = v.tolist() if isinstance(v, np.ndarray) else list(v)
            if n >= 0 and len(col) != n:
                raise EntityRowError(f"column has {len(col)} values but the others have {n}", row=None, column=k)
            n = len(col)
            cols[k] = col
        return max(n, 0), cols
    raise EntityRowError(
        f"entity_rows must be a list of dicts or a dict of columns, got {type(entity_rows).__name__}",
        row=None,
        column=None,
    )


def key_column(cols: dict[str, list[Any]], key: str, n: int) -> list[Any]:
    """The stored form of one join-key column of the entity rows; a missing key names its row."""
    col = cols.get(key)
    if col is None:
        if n == 0:
            return []
        raise EntityRowError(f"join key {key!r} is missing", row=0, column=key)
    types = set(map(type, col))
    if (types == {str} and texts_ok(col)) or (types == {int} and min(col) >= _INT64_MIN and max(col) <= _INT64_MAX):
        return col
    out = []
    for i, v in enumerate(col):
        if v is None:
            raise EntityRowError(f"join key {key!r} is missing", row=i, column=key)
        try:
            out.append(check_key_value(v))
        except ValueError as exc:
            raise EntityRowError(str(exc), row=i, column=key) from None
    return out


def strict_keys(col: list[Any], key: str) -> None:
    """Check every value of a key column, raising the precise error for the first bad one."""
    for i, v in enumerate(col):
        try:
            check_key_value(v)
        except ValueError as exc:
            raise EntityRowError(str(exc), row=i, column=key) from None
