"""Columnar encoding of feature rows: one typed column per feature, numeric columns as raw little-endian buffers.

A column on the wire is ``[name, dtype, nulls, data]``:

* ``int64``, ``float32``, ``float64``, ``timestamp`` (int64 epoch µs), ``bool`` (one byte each) and
  ``float32[N]`` (N floats per row): ``data`` is the raw little-endian buffer (``np.frombuffer`` decodes it
  without touching each value); ``nulls`` is nil or a little-endian bitmap with bit *i* set when row *i* is
  missing (its slot in ``data`` holds zeros).
* ``string`` and ``bytes``: ``data`` is a msgpack array of str / bin, nil for a missing value; ``nulls`` is nil.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud_sync._errors import DecodeError, EncodeError
from edge_runtime._time import to_epoch_us

_VECTOR_RE = re.compile(r"float32\[([1-9][0-9]{0,6})\]\Z")
#: numpy dtype of the fixed-width dtypes on the wire.
_FIXED: dict[str, str] = {
    "int64": "<i8",
    "float32": "<f4",
    "float64": "<f8",
    "bool": "u1",
    "timestamp": "<i8",
}
OBJECT_DTYPES = ("string", "bytes")
#: Every scalar dtype; vectors are written ``float32[N]``.
DTYPES = (*_FIXED, *OBJECT_DTYPES)
_NAME_MAX = 256
_INT64 = (-(2**63), 2**63 - 1)
_NUM_TYPES = {int, float, np.int64, np.int32, np.float64, np.float32, np.int16, np.int8}


def parse_dtype(dtype: object) -> tuple[str, int]:
    """Split a dtype string into (base, dim): ``("float64", 0)``, ``("float32", 16)`` for ``float32[16]``."""
    if isinstance(dtype, str):
        if dtype in DTYPES:
            return dtype, 0
        m = _VECTOR_RE.match(dtype)
        if m:
            return "float32", int(m.group(1))
    raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)} or float32[N]")


@dataclass(frozen=True, eq=False)
class Column:
    """One column of a feature batch.

    ``values`` is a numpy array for fixed-width dtypes (shape ``(n,)``, or ``(n, N)`` for ``float32[N]``; bool
    as ``np.bool_``; timestamps as int64 epoch µs) and a list (None = missing) for ``string`` and ``bytes``.
    ``nulls`` is a bool array marking missing rows of a numeric column, or None when none are missing.
    Arrays decoded from a message are read-only views of the message buffer.
    """

    name: str
    dtype: str
    values: Any
    nulls: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def from_values(cls, name: str, values: Any, dtype: str | None = None) -> Column:
        """Build a column from a list or array, inferring the dtype when not given.

        Timestamps (``dtype="timestamp"``, inferred for aware datetimes and ``datetime64``) accept what the
        feature store accepts: aware datetimes, ``datetime64`` and epoch *seconds*; use :meth:`from_epoch_us`
        for values already in microseconds.
        """
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_MAX:
            raise EncodeError(f"a column name must be a non-empty str of at most {_NAME_MAX} characters", field=name)
        if not isinstance(values, np.ndarray) and hasattr(values, "to_numpy"):
            values = values.to_numpy()  # a pandas Series (tz-aware times come out as Timestamp objects)
        if dtype is None:
            dtype = infer_dtype(name, values)
        try:
            base, dim = parse_dtype(dtype)
        except ValueError as exc:
            raise EncodeError(str(exc), field=name) from None
        try:
            if base in OBJECT_DTYPES:
                return cls(name, dtype, _object_values(values, bytes if base == "bytes" else str))
            if dim:
                data, nulls = _vector_values(values, dim)
            elif base == "timestamp":
                data, nulls = _timestamp_values(values)
            else:
                data, nulls = _fixed_values(values, base)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"{dtype} column: {exc}", field=name) from None
        return cls(name, dtype, data, nulls)

    @classmethod
    def from_epoch_us(cls, name: str, values: Any) -> Column:
        """A ``timestamp`` column from integers that already are epoch microseconds."""
        return cls(name, "timestamp", np.ascontiguousarray(values, dtype=np.int64))

    def to_python(self, *, timestamps: str = "datetime64") -> Any:
        """The column as the feature store's ``write_to_online_store`` takes it.

        A numpy array when nothing is missing, else a list with None. ``timestamps``: ``"datetime64"`` (a
        ``datetime64[us]`` view of the int64 microseconds: exact, no copy, the store's fastest path), ``"us"``
        (int64 epoch µs), ``"seconds"`` (float64 epoch seconds) or ``"datetime"`` (aware UTC datetimes, slow).
        """
        if self.dtype in OBJECT_DTYPES:
            return self.values
        values = self.values
        if self.dtype == "timestamp":
            if timestamps == "datetime64":
                values = values.view("datetime64[us]")
            elif timestamps == "seconds":
                values = values / 1_000_000
            elif timestamps == "datetime":
                epoch = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
                out = [epoch + _dt.timedelta(microseconds=us) for us in values.tolist()]
                return self._with_nones(out)
            elif timestamps != "us":
                raise ValueError(f"timestamps must be 'datetime64', 'us', 'seconds' or 'datetime', not {timestamps!r}")
        if self.nulls is None:
            return values
        return self._with_nones(list(values) if values.ndim > 1 or values.dtype.kind == "M" else values.tolist())

    def _with_nones(self, out: list[Any]) -> list[Any]:
        if self.nulls is not None:
            for i in np.flatnonzero(self.nulls).tolist():
                out[i] = None
        return out

    def take(self, start: int, stop: int) -> Column:
        """Rows ``start:stop`` of this column."""
        nulls = None if self.nulls is None else self.nulls[start:stop]
        if nulls is not None and not nulls.any():
            nulls = None
        return Column(self.name, self.dtype, self.values[start:stop], nulls)

    def equals(self, other: object) -> bool:
        """Same name, dtype, missing rows and values (NaN equals NaN; values under a null are ignored)."""
        if not isinstance(other, Column) or (self.name, self.dtype) != (other.name, other.dtype):
            return False
        if len(self) != len(other):
            return False
        if self.dtype in OBJECT_DTYPES:
            return bool(self.values == other.values)
        a = np.zeros(len(self), bool) if self.nulls is None else self.nulls
        b = np.zeros(len(other), bool) if other.nulls is None else other.nulls
        if not np.array_equal(a, b):
            return False
        keep = ~a
        return bool(np.array_equal(self.values[keep], other.values[keep], equal_nan=self.dtype.startswith("float")))

    # --- wire -------------------------------------------------------------------------------------------------

    def to_wire(self) -> list[Any]:
        """The msgpack-ready ``[name, dtype, nulls, data]`` of this column."""
        if self.dtype in OBJECT_DTYPES:
            return [self.name, self.dtype, None, self.values]
        base, _ = parse_dtype(self.dtype)
        data = np.ascontiguousarray(self.values, dtype=_FIXED[base]).tobytes()
        nulls = None
        if self.nulls is not None and self.nulls.any():
            nulls = np.packbits(self.nulls, bitorder="little").tobytes()
        return [self.name, self.dtype, nulls, data]

    @classmethod
    def from_wire(cls, item: object, n: int, where: str) -> Column:
        """Validate and decode one wire column of ``n`` rows; raise DecodeError naming ``where`` on any problem."""
        if type(item) is not list or len(item) < 4:
            raise DecodeError("a column must be an array [name, dtype, nulls, data]", reason="body", field=where)
        name, dtype, nulls_raw, data = item[:4]
        if type(name) is not str or not 0 < len(name) <= _NAME_MAX:
            raise DecodeError("column name must be a non-empty str", reason="body", field=where)
        field = f"{where}.{name}"
        try:
            base, dim = parse_dtype(dtype)
        except ValueError as exc:
            raise DecodeError(str(exc), reason="body", field=field) from None
        if base in OBJECT_DTYPES:
            kind = str if base == "string" else bytes
            if nulls_raw is not None or type(data) is not list or len(data) != n:
                raise DecodeError(f"{dtype} data must be an array of {n} values", reason="body", field=field)
            if not {type(v) for v in data} <= {kind, type(None)}:
                raise DecodeError(f"{dtype} values must be {kind.__name__} or nil", reason="body", field=field)
            return cls(name, dtype, data)
        np_dtype = np.dtype(_FIXED[base])
        want = n * max(dim, 1) * np_dtype.itemsize
        if type(data) is not bytes or len(data) != want:
            raise DecodeError(f"{dtype} data must be {want} bytes for {n} rows", reason="body", field=field)
        values = np.frombuffer(data, dtype=np_dtype)
        if dim:
            values = values.reshape(n, dim)
        if base == "bool":
            if n and int(values.max()) > 1:
                raise DecodeError("bool bytes must be 0 or 1", reason="body", field=field)
            values = values.view(np.bool_)
        nulls = None
        if nulls_raw is not None:
            if type(nulls_raw) is not bytes or len(nulls_raw) != (n + 7) // 8:
                raise DecodeError(f"nulls must be a bitmap of {(n + 7) // 8} bytes", reason="body", field=field)
            mask = np.unpackbits(np.frombuffer(nulls_raw, np.uint8), count=n, bitorder="little").view(np.bool_)
            nulls = mask if mask.any() else None
        return cls(name, dtype, values, nulls)


def infer_dtype(name: str, values: Any) -> str:
    """The dtype a column of ``values`` gets when none is given; EncodeError when it cannot be told."""
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if values.ndim == 2 and kind in "fiu":
            return f"float32[{values.shape[1]}]"
        if values.ndim == 1:
            found = {"b": "bool", "i": "int64", "u": "int64", "U": "string", "S": "bytes", "M": "timestamp"}.get(kind)
            if kind == "f":
                found = "float32" if values.dtype.itemsize <= 4 else "float64"
            if found:
                return found
            if kind == "O":
                return infer_dtype(name, values.tolist())
        raise EncodeError(f"cannot infer a dtype for a {values.ndim}-d {values.dtype} array", field=name)
    types = {type(v) for v in values} - {type(None)}
    if not types:
        raise EncodeError("all values are missing; give the dtype explicitly", field=name)
    if types <= {bool, np.bool_}:
        return "bool"
    if types <= {int, np.int64, np.int32}:
        return "int64"
    if types <= {int, float, np.float64, np.int64, np.int32}:
        return "float64"
    if types <= {np.float32}:
        return "float32"
    if types <= {str}:
        return "string"
    if types <= {bytes, bytearray}:
        return "bytes"
    if all(isinstance(v, (_dt.datetime, np.datetime64)) for v in values if v is not None):
        return "timestamp"  # includes subclasses such as pandas.Timestamp
    if types <= {list, tuple, np.ndarray}:
        first = next(v for v in values if v is not None)
        return f"float32[{len(first)}]"
    shown = ", ".join(sorted(t.__name__ for t in types))
    raise EncodeError(f"cannot infer a dtype from values of types {shown}; give the dtype explicitly", field=name)


def _missing(values: Sequence[Any]) -> np.ndarray | None:
    mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    return mask if mask.any() else None


def _fixed_values(values: Any, base: str) -> tuple[np.ndarray, np.ndarray | None]:
    np_dtype = np.dtype(_FIXED[base]).newbyteorder("=")
    if base == "bool":
        np_dtype = np.dtype(np.bool_)
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"expected a 1-d array, got shape {values.shape}")
        kind = values.dtype.kind
        allowed = {"int64": "iu", "float32": "iuf", "float64": "iuf", "bool": "b"}[base]
        if kind not in allowed:
            raise TypeError(f"cannot store a {values.dtype} array")
        if kind == "u" and values.size and int(values.max()) > _INT64[1]:
            raise OverflowError("value exceeds int64")
        return values.astype(np_dtype, copy=False), None
    values = list(values)
    nulls = _missing(values)
    if nulls is not None:
        values = [0 if v is None else v for v in values]
    types = {type(v) for v in values}
    allowed_types: set[type] = {  # type: ignore[assignment]
        "int64": {int, np.int64, np.int32},
        "float32": _NUM_TYPES,
        "float64": _NUM_TYPES,
        "bool": {bool, np.bool_} | ({int} if nulls is not None else set()),
    }[base]
    if not types <= allowed_types:
        bad = sorted(t.__name__ for t in types - allowed_types)
        raise TypeError(f"values of type {', '.join(bad)} are not allowed")
    return np.array(values, dtype=np_dtype), nulls


def _timestamp_values(values: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(values, np.ndarray) and values.ndim == 1:
        kind = values.dtype.kind
        if kind == "M":
            if np.isnat(values).any():
                raise ValueError("NaT is not a timestamp; use None for a missing value")
            return values.astype("datetime64[us]").view(np.int64), None
        if kind in "iu":
            return values.astype(np.int64) * 1_000_000, None
        if kind == "f":
            if not np.isfinite(values).all():
                raise ValueError("timestamps must be finite")
            return np.round(values.astype(np.float64) * 1_000_000).astype(np.int64), None
        values = values.tolist()
    values = list(values)
    nulls = _missing(values)
    out = np.fromiter((0 if v is None else to_epoch_us(v) for v in values), dtype=np.int64, count=len(values))
    return out, nulls


def _vector_values(values: Any, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        if values.shape[1] != dim or values.dtype.kind not in "iuf":
            raise ValueError(f"expected an (n, {dim}) numeric array, got {values.shape} {values.dtype}")
        return values.astype(np.float32), None
    values = list(values)
    nulls = _missing(values)
    out = np.zeros((len(values), dim), dtype=np.float32)
    for i, v in enumerate(values):
        if v is None:
            continue
        row = np.asarray(v)
        if row.shape != (dim,) or row.dtype.kind not in "iuf":
            raise ValueError(f"row {i}: expected {dim} numbers, got shape {row.shape} {row.dtype}")
        out[i] = row
    return out, nulls


def _object_values(values: Any, kind: type) -> list[Any]:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    out = list(values)
    if kind is bytes:
        out = [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in out]
    types = {type(v) for v in out} - {type(None)}
    if not types <= {kind}:
        bad = sorted(t.__name__ for t in types - {kind})
        raise TypeError(f"values of type {', '.join(bad)} are not allowed")
    return out


def columns_to_wire(columns: Mapping[str, Column]) -> dict[str, Any]:
    """The msgpack-ready form ``{"n": rows, "c": [column, ...]}`` of a set of equally long columns."""
    n = len(next(iter(columns.values()))) if columns else 0
    return {"n": n, "c": [c.to_wire() for c in columns.values()]}


def columns_from_wire(obj: object, where: str, max_rows: int) -> dict[str, Column]:
    """Validate and decode a wire column set; DecodeError (naming ``where``) on any problem."""
    if type(obj) is not dict or type(obj.get("n")) is not int or type(obj.get("c")) is not list:
        raise DecodeError('a column set must be a map {"n": int, "c": [...]}', reason="body", field=where)
    n = obj["n"]
    if not 0 <= n <= max_rows:
        raise DecodeError(f"row count {n} is outside 0..{max_rows}", reason="body", field=where)
    out: dict[str, Column] = {}
    for item in obj["c"]:
        col = Column.from_wire(item, n, where)
        if col.name in out:
            raise DecodeError(f"column {col.name!r} appears twice", reason="body", field=where)
        out[col.name] = col
    if n and not out:
        raise DecodeError(f"{n} rows but no columns", reason="body", field=where)
    return out


def build_columns(values: Mapping[str, Any] | None, dtypes: Mapping[str, str] | None, where: str) -> dict[str, Column]:
    """Columns from ``{name: values}`` (Column objects pass through), checked to be equally long."""
    out: dict[str, Column] = {}
    for name, vals in (values or {}).items():
        col = vals if isinstance(vals, Column) else Column.from_values(name, vals, (dtypes or {}).get(name))
        out[col.name] = col
    lengths = {len(c) for c in out.values()}
    if len(lengths) > 1:
        shown = ", ".join(f"{c.name}={len(c)}" for c in out.values())
        raise EncodeError(f"columns have different lengths: {shown}", field=where)
    return out
