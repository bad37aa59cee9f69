"""Feature value types: parsing the dtype strings, checking and encoding values for SQLite, decoding them back.

Encoding is column-wise: a whole column of a batch is checked with one fast pass (``type(v) is int`` for every
value, ``min``/``max`` for the range) and only when that pass fails does a slow pass look for the first offending
row, so a valid batch costs a few C-level loops per column. numpy arrays are checked and converted vectorised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_VECTOR = re.compile(r"^float32\[([1-9][0-9]{0,6})\]$")
SCALAR_DTYPES = ("int64", "float32", "float64", "bool", "string", "bytes")
#: SQLite turns a bound NaN into NULL, so a NaN allowed by ``allow_nan`` is stored as this text and decoded by
#: ``float()`` on read (``float("NaN")`` is NaN).
NAN_TEXT = "NaN"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_F32_MAX = float(np.finfo(np.float32).max)
NAN_REFUSED = "NaN is not allowed here (declare the field with allow_nan=True)"
#: ``allow_nan`` is the field's one switch for non-finite values: it admits NaN and +-inf alike.
INF_REFUSED = "inf is not allowed here (values must be finite; declare the field with allow_nan=True to allow inf)"


class ValueCheckError(ValueError):
    """One value of a column is invalid: ``index`` is its position in the column."""

    def __init__(self, index: int, message: str) -> None:
        self.index = index
        super().__init__(message)


@dataclass(frozen=True)
class DType:
    """A parsed dtype string: ``kind`` is one of :data:`SCALAR_DTYPES` or ``"vector"`` (``dim`` floats)."""

    name: str
    kind: str
    dim: int = 0

    @property
    def sql_type(self) -> str:
        """The SQLite column type that stores this dtype natively."""
        return {
            "int64": "INTEGER",
            "bool": "INTEGER",
            "float32": "REAL",
            "float64": "REAL",
            "string": "TEXT",
            "bytes": "BLOB",
            "vector": "BLOB",
        }[self.kind]

    @property
    def is_float(self) -> bool:
        """True for dtypes that can hold NaN (scalars and vectors of floats)."""
        return self.kind in ("float32", "float64", "vector")

    @property
    def is_numeric(self) -> bool:
        """True for dtypes that aggregations (sum, mean, min, max) accept."""
        return self.kind in ("int64", "float32", "float64", "bool")

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of one value (``object`` for strings and bytes, float32 for vectors)."""
        return np.dtype(
            {
                "int64": np.int64,
                "bool": np.bool_,
                "float32": np.float32,
                "float64": np.float64,
                "vector": np.float32,
            }.get(self.kind, object)
        )

    # --- encoding (Python → SQLite) -------------------------------------------------------------------------

    def encode_column(self, values: Sequence[Any] | np.ndarray, *, allow_nan: bool, nullable: bool) -> list[Any]:
        """Check and convert one column of values to what SQLite stores; raises :class:`ValueCheckError`."""
        if isinstance(values, np.ndarray):
            return self._encode_array(values, allow_nan=allow_nan)
        col = values if isinstance(values, list) else list(values)
        types = set(map(type, col))
        if types <= _ALLOWED[self.kind] and (nullable or _NONE not in types):
            return self._finish_fast(col, types, allow_nan=allow_nan)
        return self._encode_slow(col, allow_nan=allow_nan, nullable=nullable)

    def _finish_fast(self, col: list[Any], types: set[type], *, allow_nan: bool) -> list[Any]:
        # Every value already has an accepted Python type; what is left are range and NaN checks.
        kind = self.kind
        has_none = _NONE in types
        present = [v for v in col if v is not None] if has_none else col
        if kind == "int64":
            if present and (min(present) < _INT64_MIN or max(present) > _INT64_MAX):
                return self._encode_slow(col, allow_nan=allow_nan, nullable=True)
            return col
        if kind in ("float32", "float64"):
            try:
                total = sum(present)  # NaN when any value is NaN: one C loop instead of a check per value
            except OverflowError:
                return self._encode_slow(col, allow_nan=allow_nan, nullable=True)
            if not math.isfinite(total):  # NaN or inf somewhere: refuse it, or store NaN as NAN_TEXT
                return self._encode_slow(col, allow_nan=allow_nan, nullable=True)
            if kind == "float32":
                if has_none or int in types:
                    return self._encode_slow(col, allow_nan=allow_nan, nullable=True)
                arr = np.asarray(col, dtype=np.float64)
                with np.errstate(over="ignore"):
                    out32 = arr.astype(np.float32)
                _first_bad(np.isinf(out32) & ~np.isinf(arr), "out of the float32 range")
                return out32.tolist()
            if int in types:
                return [float(v) if type(v) is int else v for v in col]
            return col
        if kind == "bool":
            return [None if v is None else int(v) for v in col]
        if kind == "string" and not texts_ok(col):
            return self._encode_slow(col, allow_nan=allow_nan, nullable=True)
        return col

    def _encode_slow(self, col: list[Any], *, allow_nan: bool, nullable: bool) -> list[Any]:
        out: list[Any] = []
        encode = self.encode_value
        for i, v in enumerate(col):
            if v is None:
                if not nullable:
                    raise ValueCheckError(i, "value is missing")
                out.append(None)
                continue
            try:
                out.append(encode(v, allow_nan=allow_nan))
            except ValueError as exc:
                raise ValueCheckError(i, str(exc)) from None
        return out

    def encode_value(self, v: Any, *, allow_nan: bool) -> Any:
        """Check and convert one non-None value; raises ``ValueError`` saying what was expected."""
        kind = self.kind
        if kind == "int64":
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"expected an int64, got {_describe(v)}")
            iv = int(v)
            if not _INT64_MIN <= iv <= _INT64_MAX:
                raise ValueError(f"{iv} is out of the int64 range")
            return iv
        if kind in ("float32", "float64"):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"expected a {kind}, got {_describe(v)}")
            try:
                f = float(v)
            except OverflowError:
                raise ValueError(f"{v} is out of the {kind} range") from None
            if f != f:
                if not allow_nan:
                    raise ValueError(NAN_REFUSED)
                return NAN_TEXT
            if not allow_nan and math.isinf(f):
                raise ValueError(INF_REFUSED)
            if kind == "float32":
                if math.isfinite(f) and abs(f) > _F32_MAX:
                    raise ValueError(f"{f} is out of the float32 range")
                return float(np.float32(f))
            return f
        if kind == "bool":
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"expected a bool, got {_describe(v)}")
            return int(bool(v))
        if kind == "string":
            if not isinstance(v, str):
                raise ValueError(f"expected a string, got {_describe(v)}")
            check_text(v)
            return str(v)
        if kind == "bytes":
            if not isinstance(v, (bytes, bytearray, memoryview)):
                raise ValueError(f"expected bytes, got {_describe(v)}")
            return bytes(v)
        return self._encode_vector(v, allow_nan=allow_nan)

    def _encode_vector(self, v: Any, *, allow_nan: bool) -> bytes:
        if isinstance(v, (str, bytes, bytearray)) or not isinstance(v, (Sequence, np.ndarray)):
            raise ValueError(f"expected {self.dim} floats ({self.name}), got {_describe(v)}")
        try:
            arr = np.asarray(v)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"expected {self.dim} floats ({self.name}): {exc}") from None
        if arr.shape != (self.dim,) or arr.dtype.kind not in "iuf":
            raise ValueError(f"expected {self.dim} floats ({self.name}), got shape {arr.shape} of {arr.dtype}")
        arr32 = arr.astype("<f4")
        if not allow_nan and np.isnan(arr32).any():
            raise ValueError(NAN_REFUSED)
        if not allow_nan and np.isinf(arr).any():
            raise ValueError(INF_REFUSED)
        if (np.isinf(arr32) & ~np.isinf(arr)).any():
            raise ValueError("a value is out of the float32 range")
        return arr32.tobytes()

    def _encode_array(self, arr: np.ndarray, *, allow_nan: bool) -> list[Any]:
        kind = self.kind
        if kind == "vector":
            if arr.ndim == 2 and arr.shape[1] == self.dim and arr.dtype.kind in "iuf":
                with np.errstate(over="ignore"):
                    arr32 = np.ascontiguousarray(arr, dtype="<f4")
                if not allow_nan:
                    _first_bad(np.isnan(arr32).any(axis=1), NAN_REFUSED)
                    _first_bad(np.isinf(arr).any(axis=1), INF_REFUSED)
                _first_bad((np.isinf(arr32) & ~np.isinf(arr)).any(axis=1), "a value is out of the float32 range")
                return [row.tobytes() for row in arr32]
            if arr.dtype != object:
                raise ValueCheckError(0, f"expected an array of shape (n, {self.dim}), got {arr.shape}")
            return self._encode_slow(list(arr), allow_nan=allow_nan, nullable=False)
        if arr.ndim != 1:
            raise ValueCheckError(0, f"expected a 1-d array, got shape {arr.shape}")
        dk = arr.dtype.kind
        if kind == "int64" and dk in "iu":
            if dk == "u" and arr.size and arr.max() > _INT64_MAX:
                _first_bad(arr > _INT64_MAX, "out of the int64 range")
            return arr.astype(np.int64).tolist()
        if kind in ("float32", "float64") and dk in "iuf":
            with np.errstate(over="ignore"):
                out = arr.astype(np.float32 if kind == "float32" else np.float64)
            if dk == "f":
                nan = np.isnan(out)
                if not allow_nan:
                    _first_bad(nan, NAN_REFUSED)
                    _first_bad(np.isinf(arr), INF_REFUSED)
                if kind == "float32":
                    _first_bad(np.isinf(out) & ~np.isinf(arr), "out of the float32 range")
                if nan.any():
                    return [NAN_TEXT if m else v for v, m in zip(out.tolist(), nan.tolist(), strict=True)]
            return out.tolist()
        if kind == "bool" and dk == "b":
            return arr.astype(np.int64).tolist()
        if dk in "OUS":
            return self._encode_slow(arr.tolist(), allow_nan=allow_nan, nullable=False)
        raise ValueCheckError(0, f"expected {self.name} values, got a numpy array of {arr.dtype}")

    # --- decoding (SQLite → Python) -------------------------------------------------------------------------

    def decoder(self) -> Callable[[Any], Any] | None:
        """A function that turns a stored value back into the Python value, or None when none is needed."""
        if self.kind == "bool":
            return bool
        if self.kind == "vector":
            return _decode_vector
        return None


def _decode_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def _first_bad(mask: np.ndarray, message: str) -> None:
    if mask.any():
        raise ValueCheckError(int(np.argmax(mask)), message)


def _describe(v: Any) -> str:
    text = repr(v)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(v).__name__} {text}"


_NONE = type(None)
#: The Python types a column may hold for the fast path (anything else goes value by value).
_ALLOWED: dict[str, frozenset[type]] = {
    "int64": frozenset({int, _NONE}),
    "float32": frozenset({float, int, _NONE}),
    "float64": frozenset({float, int, _NONE}),
    "bool": frozenset({bool, _NONE}),
    "string": frozenset({str, _NONE}),
    "bytes": frozenset({bytes, _NONE}),
    "vector": frozenset(),
}


def parse_dtype(text: object) -> DType:
    """Parse a dtype string (``"int64"``, ``"float32[128]"``, ...); raises ``ValueError`` naming the valid ones."""
    if isinstance(text, DType):
        return text
    if isinstance(text, str):
        if text in SCALAR_DTYPES:
            return DType(text, text)
        m = _VECTOR.match(text)
        if m:
            return DType(text, "vector", int(m.group(1)))
    raise ValueError(f"unknown dtype {text!r}; expected one of {', '.join(SCALAR_DTYPES)} or float32[N]")


def check_text(v: str) -> None:
    """Refuse a string SQLite cannot store: one holding a surrogate code point (not valid UTF-8)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"string holds the lone surrogate {v[exc.start]!r} at position {exc.start}; expected valid Unicode text"
        ) from None


def texts_ok(col: list[Any]) -> bool:
    """True when every str in ``col`` encodes as UTF-8 (one C-level pass for the whole column)."""
    try:
        "".join(v for v in col if type(v) is str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_key_value(v: Any) -> Any:
    """A join-key value as stored: an int (int64 range) or a string; raises ``ValueError`` otherwise."""
    t = type(v)
    if t is int or (isinstance(v, np.integer) and not isinstance(v, np.bool_)):
        iv = int(v)
        if not _INT64_MIN <= iv <= _INT64_MAX:
            raise ValueError(f"join key {iv} is out of the int64 range")
        return iv
    if t is str or isinstance(v, np.str_):
        check_text(str(v))
        return str(v)
    raise ValueError(f"a join key must be an int or a string, got {_describe(v)}")
