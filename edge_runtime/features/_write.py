"""Validating a batch of rows and upserting it: the whole batch is checked before anything is written.

A batch arrives as a list of dicts, a dict of columns (lists or numpy arrays) or a pandas DataFrame; it is turned
into columns, each column is checked and encoded in one pass (see :mod:`._dtypes`), and the rows go to SQLite with
one ``executemany`` of a prepared upsert whose ``WHERE excluded.event_ts >= stored.event_ts`` keeps the newest
event per entity, whatever order the rows arrive in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from edge_runtime._errors import RowValidationError
from edge_runtime._sqlite import quote_ident
from edge_runtime._time import to_epoch_us

from ._definitions import Field
from ._dtypes import NAN_TEXT, ValueCheckError, check_key_value, texts_ok

TS = "event_timestamp"


def to_columns(rows: object, target: str) -> tuple[int, dict[str, Any], list[Mapping[str, Any]] | None]:
    """``(n_rows, columns, row_dicts)``: any accepted batch shape as columns (``row_dicts`` for error messages)."""
    if isinstance(rows, list) or (isinstance(rows, tuple) and rows and isinstance(rows[0], Mapping)):
        seq: Sequence[Any] = rows
        if not set(map(type, seq)) <= {dict}:
            for i, r in enumerate(seq):
                if not isinstance(r, Mapping):
                    raise RowValidationError(
                        f"expected a dict per row, got {type(r).__name__}", target=target, row=i, column=None
                    )
        names = list(set().union(*seq)) if seq else []
        by_name: dict[str, Any]
        try:
            # C-speed transpose when every row has every column (the usual case); .get() otherwise.
            getter = itemgetter(*names)
            picked = list(map(getter, seq))
            if len(names) == 1:
                by_name = {names[0]: picked}
            else:
                by_name = dict(zip(names, map(list, zip(*picked, strict=True)), strict=True))
        except (KeyError, TypeError):
            by_name = {c: [r.get(c) for r in seq] for c in names}
        return len(seq), by_name, list(seq)
    if _is_dataframe(rows):
        return _dataframe_columns(rows, target)
    if isinstance(rows, Mapping):
        cols: dict[str, Any] = {}
        n = None
        for c, values in rows.items():
            if not isinstance(c, str):
                raise RowValidationError(f"column name {c!r} is not a string", target=target, row=None, column=None)
            if isinstance(values, np.ndarray):
                length = values.shape[0] if values.ndim else -1
            elif isinstance(values, (list, tuple)):
                length = len(values)
            else:
                raise RowValidationError(
                    f"a column must be a list or a numpy array, got {type(values).__name__}",
                    target=target,
                    row=None,
                    column=c,
                )
            if n is None:
                n = length
            elif length != n:
                raise RowValidationError(
                    f"column has {length} values but the others have {n}", target=target, row=None, column=c
                )
            cols[c] = values if isinstance(values, np.ndarray) else list(values)
        return n or 0, cols, None
    raise RowValidationError(
        f"rows must be a list of dicts, a dict of columns or a pandas DataFrame, got {type(rows).__name__}",
        target=target,
        row=None,
        column=None,
    )


def _is_dataframe(obj: object) -> bool:
    return type(obj).__name__ == "DataFrame" and type(obj).__module__.startswith("pandas")


def _dataframe_columns(df: Any, target: str) -> tuple[int, dict[str, Any], None]:
    import pandas as pd  # only reached when the caller passed a DataFrame, so pandas is installed

    cols: dict[str, Any] = {}
    for c in df.columns:
        s = df[c]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            if s.isna().any():
                row = int(np.argmax(s.isna().to_numpy()))
                raise RowValidationError("timestamp is missing", target=target, row=row, column=str(c))
            # numpy datetime64 is UTC by convention, so drop the zone only after converting to UTC.
            cols[str(c)] = s.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]")
        elif s.dtype.kind == "M":
            raise RowValidationError(
                "naive datetime column has no timezone; localize it (e.g. .dt.tz_localize('UTC'))",
                target=target,
                row=0,
                column=str(c),
            )
        else:
            cols[str(c)] = s.to_numpy()
    return len(df), cols, None


def encode_batch(
    *,
    target: str,
    n: int,
    cols: dict[str, Any],
    row_dicts: list[Mapping[str, Any]] | None,
    keys: Sequence[str],
    fields: Sequence[Field],
    kind: str,
) -> list[list[Any]]:
    """Check every column and return them encoded in the order ``keys``, ``fields``, ``event_ts``.

    ``kind`` ("feature" or "event field") names the columns in errors. A field absent from the batch is NULL.
    """
    known = {f.name for f in fields}
    if n == 0 and not cols:
        return [[] for _ in range(len(keys) + len(fields) + 1)]
    for c in cols:
        if c not in known and c not in keys and c != TS:
            row = None
            if row_dicts is not None:
                row = next(i for i, r in enumerate(row_dicts) if c in r)
            raise RowValidationError(
                f"unknown {kind}; {target} has join keys {list(keys)}, {kind}s {sorted(known)} and {TS!r}",
                target=target,
                row=row,
                column=c,
            )
    out: list[list[Any]] = []
    for k in keys:
        out.append(encode_keys(cols.get(k), n, target, k, row_dicts))
    for f in fields:
        col = cols.get(f.name)
        if col is None:
            out.append([None] * n)
            continue
        try:
            encoded = f.type.encode_column(col, allow_nan=f.allow_nan, nullable=True)
        except ValueCheckError as exc:
            raise RowValidationError(str(exc), target=target, row=exc.index, column=f.name) from None
        if kind == "event field" and f.allow_nan and NAN_TEXT in encoded:
            # An allowed NaN event value is stored as NULL, so aggregates skip it rather than read the text as 0.
            encoded = [None if v == NAN_TEXT else v for v in encoded]
        out.append(encoded)
    out.append(encode_timestamps(cols.get(TS), n, target))
    return out


def encode_keys(col: Any, n: int, target: str, key: str, row_dicts: list[Mapping[str, Any]] | None = None) -> list[Any]:
    """A join-key column as stored values; a missing or badly typed key names its row."""
    if col is None:
        raise RowValidationError(f"join key {key!r} is missing", target=target, row=0 if n else None, column=key)
    if isinstance(col, np.ndarray):
        if col.dtype.kind in "iu" and col.ndim == 1:
            if col.dtype.kind == "u" and col.size and col.max() > _INT64_MAX:
                row = int(np.argmax(col > _INT64_MAX))
                raise RowValidationError(
                    f"join key {int(col[row])} is out of the int64 range", target=target, row=row, column=key
                )
            return col.astype(np.int64).tolist()
        col = col.tolist()
    types = set(map(type, col))
    if (types == {str} and texts_ok(col)) or (types == {int} and min(col) >= _INT64_MIN and max(col) <= _INT64_MAX):
        return col
    out = []
    for i, v in enumerate(col):
        if v is None:
            raise RowValidationError(f"join key {key!r} is missing", target=target, row=i, column=key)
        try:
            out.append(check_key_value(v))
        except ValueError as exc:
            raise RowValidationError(str(exc), target=target, row=i, column=key) from None
    return out


def encode_timestamps(col: Any, n: int, target: str) -> list[int]:
    """The event-time column as epoch microseconds; naive datetimes and missing values are refused."""
    if col is None:
        raise RowValidationError(
            "event_timestamp is missing (an aware datetime or epoch seconds)",
            target=target,
            row=0 if n else None,
            column=TS,
        )
    if isinstance(col, np.ndarray):
        kind = col.dtype.kind
        if kind in "iu" or kind == "f":
            bad = ~(np.abs(col.astype(np.float64)) <= _MAX_SECONDS)  # NaN and inf are out of range too
            if bad.any():
                raise RowValidationError(
                    "timestamp is not finite or out of range", target=target, row=int(np.argmax(bad)), column=TS
                )
        if kind in "iu":
            return (col.astype(np.int64) * 1_000_000).tolist()
        if kind == "f":
            return np.round(col.astype(np.float64) * 1_000_000).astype(np.int64).tolist()
        if kind == "M":
            nat = np.isnat(col)
            if nat.any():
                raise RowValidationError("timestamp is NaT", target=target, row=int(np.argmax(nat)), column=TS)
            return col.astype("datetime64[us]").astype(np.int64).tolist()
        col = col.tolist()
    types = set(map(type, col))
    if types == {int}:
        return _in_range([v * 1_000_000 for v in col], target)
    if types <= {int, float}:
        try:
            if math.isfinite(sum(col)):
                return _in_range([round(v * 1_000_000) for v in col], target)
        except OverflowError:
            pass  # the value-by-value pass below names the row
    out = []
    for i, v in enumerate(col):
        if v is None:
            raise RowValidationError(
                "event_timestamp is missing (an aware datetime or epoch seconds)", target=target, row=i, column=TS
            )
        try:
            out.append(to_epoch_us(v))
        except (TypeError, ValueError, OverflowError) as exc:
            raise RowValidationError(str(exc), target=target, row=i, column=TS) from None
    return _in_range(out, target)


_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_SECONDS = _INT64_MAX // 1_000_000  # epoch seconds whose microseconds still fit in an int64


def _in_range(us: list[int], target: str) -> list[int]:
    if us and (min(us) < _INT64_MIN or max(us) > _INT64_MAX):
        row = next(i for i, v in enumerate(us) if not _INT64_MIN <= v <= _INT64_MAX)
        raise RowValidationError(
            "timestamp is out of range (epoch microseconds must fit in 64 bits)", target=target, row=row, column=TS
        )
    return us


def upsert_sql(table: str, keys: Sequence[str], features: Sequence[str]) -> str:
    """The prepared upsert of one view: a row never replaces a stored row with a newer event time."""
    cols = [*keys, *features, "event_ts", "written_us"]
    quoted = ", ".join(quote_ident(c) for c in cols)
    marks = ", ".join("?" for _ in cols)
    sets = ", ".join(f"{quote_ident(c)} = excluded.{quote_ident(c)}" for c in [*features, "event_ts", "written_us"])
    conflict = ", ".join(quote_ident(k) for k in keys)
    return (
        f"INSERT INTO {table} ({quoted}) VALUES ({marks}) ON CONFLICT ({conflict}) DO UPDATE SET {sets} "
        f"WHERE excluded.event_ts >= {table}.event_ts"
    )


def tombstone_times(col: Sequence[Any] | np.ndarray | None, n: int, target: str) -> list[int | None]:
    """The event times (epoch µs) of ``n`` deletions, None where a deletion carries none."""
    if col is None:
        return [None] * n
    if isinstance(col, np.ndarray) and col.dtype.kind == "M":  # datetime64: UTC by numpy's convention
        us = col.astype("datetime64[us]")
        return [None if np.isnat(t) else int(v) for t, v in zip(us, us.astype(np.int64), strict=True)]
    out: list[int | None] = []
    for i, value in enumerate(col):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(to_epoch_us(value))
        except (TypeError, ValueError) as exc:
            raise RowValidationError(str(exc), target=target, row=i, column="event_timestamp") from None
    return out
