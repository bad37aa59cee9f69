"""The answer of ``get_online_features``: values, per-value statuses, and dict / numpy / pandas views of them.

Constructing a response is cheap on purpose: it keeps the rows SQLite returned (one list per view, aligned with the
entity rows) and builds the columns the caller asks for (``to_dict``, ``to_numpy``, ``statuses``) on access.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from edge_runtime._errors import UnknownNameError

from ._dtypes import DType


class FieldStatus(enum.Enum):
    """How a value was obtained: stored and fresh, absent, or older than the view's TTL."""

    PRESENT = "PRESENT"
    NOT_FOUND = "NOT_FOUND"
    OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"


class EntityRead(NamedTuple):
    """One entity's features as flat lists in the requested order (see :meth:`FeatureStore.read_entity`)."""

    #: the feature columns' names
    names: list[str]
    #: each value, None where missing or expired
    values: list[Any]
    #: each value's status
    statuses: list[FieldStatus]
    #: when each value passes its view's TTL (epoch µs); None without a TTL, for computed values, or when absent
    expiry_us: list[int | None]


#: One output column: (name, part index, position in the part's rows, decoder or None, dtype).
Output = tuple[str, int, int, "Callable[[Any], Any] | None", DType]

_PRESENT = FieldStatus.PRESENT
_NOT_FOUND = FieldStatus.NOT_FOUND
_EXPIRED = FieldStatus.OUTSIDE_MAX_AGE


class OnlineResponse:
    """Features for a list of entity rows, in Feast's shapes.

    ``to_dict()`` gives ``{column: [values]}`` with the entity columns first, then the features in the order they
    were asked for; ``statuses`` gives a :class:`FieldStatus` per value; ``to_numpy()`` and ``to_df()`` give arrays
    and a DataFrame. A missing or expired value is ``None`` (NaN in float arrays).
    """

    __slots__ = ("_dict", "_entity_cols", "_expired", "_expiry", "_n", "_outputs", "_rows")

    def __init__(
        self,
        entity_cols: dict[str, list[Any]],
        n: int,
        outputs: Sequence[Output],
        rows: list[list[Any]],
        expired: list[set[int] | None],
        *,
        expiry: Sequence[tuple[int, int] | None] = (),
    ) -> None:
        self._entity_cols = entity_cols
        self._n = n
        self._outputs = outputs
        # Per part: the rows aligned with the entities (None when missing or expired) — or, for computed parts
        # (stream aggregates, on-demand views), one tuple per entity of the computed values.
        self._rows = rows
        self._expired = expired
        self._expiry = expiry
        self._dict: dict[str, list[Any]] | None = None

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"OnlineResponse({self._n} rows, features={self.feature_names})"

    @property
    def feature_names(self) -> list[str]:
        """The feature columns, in the order they were requested."""
        return [o[0] for o in self._outputs]

    def _columns(self) -> dict[str, list[Any]]:
        d = self._dict
        if d is None:
            d = {}
            rows = self._rows
            if self._n == 1:  # one entity (online serving): no per-column comprehension frames
                for name, part, pos, dec, _ in self._outputs:
                    r = rows[part][0]
                    v = None if r is None else r[pos]
                    d[name] = [v if dec is None or v is None else dec(v)]
                self._dict = d
                return d
            for name, part, pos, dec, _ in self._outputs:
                prow = rows[part]
                if dec is None:
                    d[name] = [r[pos] if r is not None else None for r in prow]
                else:
                    d[name] = [
                        dec(v) if v is not None else None for v in (r[pos] if r is not None else None for r in prow)
                    ]
            self._dict = d
        return d

    def to_dict(self) -> dict[str, list[Any]]:
        """``{column: [value per entity row]}``: the entity-row columns, then the features."""
        out = dict(self._entity_cols)
        out.update(self._columns())
        return out

    def values(self, name: str) -> list[Any]:
        """The values of feature ``name`` (None where missing or expired)."""
        cols = self._columns()
        if name not in cols:
            raise UnknownNameError("feature column", name, cols)
        return cols[name]

    def expired_rows(self, name: str) -> frozenset[int]:
        """Indexes of the entity rows whose value of feature ``name`` was dropped for being past its TTL."""
        out = next((o for o in self._outputs if o[0] == name), None)
        if out is None:
            raise UnknownNameError("feature column", name, self.feature_names)
        expired = self._expired[out[1]]
        return frozenset(expired) if expired else frozenset()

    def expiry_us(self, name: str) -> list[int | None]:
        """Per entity row, when feature ``name``'s value passes its view's TTL (epoch µs). None where the value is
        missing or expired, where the view has no TTL, and for computed values (stream aggregates, on-demand)."""
        out = next((o for o in self._outputs if o[0] == name), None)
        if out is None:
            raise UnknownNameError("feature column", name, self.feature_names)
        part = out[1]
        meta = self._expiry[part] if part < len(self._expiry) else None
        if meta is None:
            return [None] * self._n
        ets, ttl = meta
        values = self.values(name)
        return [
            r[ets] + ttl if r is not None and v is not None else None
            for r, v in zip(self._rows[part], values, strict=True)
        ]

    @property
    def statuses(self) -> dict[str, list[FieldStatus]]:
        """``{feature: [FieldStatus per entity row]}``."""
        out = {}
        cols = self._columns()
        for name, part, _pos, _dec, _ in self._outputs:
            expired = self._expired[part]
            out[name] = [
                _PRESENT if v is not None else (_EXPIRED if expired and i in expired else _NOT_FOUND)
                for i, v in enumerate(cols[name])
            ]
        return out

    def to_numpy(self, name: str | None = None) -> Any:
        """One feature (``name``) or every feature as numpy arrays.

        Floats and vectors use NaN for a missing value; an int64 or bool column with a missing value becomes
        float64 with NaN; strings and bytes are object arrays with None.
        """
        if name is not None:
            dtype = next((o[4] for o in self._outputs if o[0] == name), None)
            if dtype is None:
                raise UnknownNameError("feature column", name, self.feature_names)
            return _to_array(self.values(name), dtype)
        return {o[0]: _to_array(self.values(o[0]), o[4]) for o in self._outputs}

    def to_df(self) -> Any:
        """The response as a pandas DataFrame (needs pandas: ``pip install 'edge-runtime[pandas]'``)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is part of the dev extra
            from edge_runtime._errors import FeatureStoreError

            raise FeatureStoreError("to_df() needs pandas: pip install 'edge-runtime[pandas]'") from exc
        return pd.DataFrame(self.to_dict())


def _to_array(values: list[Any], dtype: DType) -> np.ndarray:
    missing = any(v is None for v in values)
    if dtype.kind == "vector":
        nan_row = np.full(dtype.dim, np.nan, dtype=np.float32)
        return np.stack([nan_row if v is None else v for v in values]) if values else np.empty((0, dtype.dim))
    if dtype.kind in ("string", "bytes"):
        return np.array(values, dtype=object)
    if missing:
        target = np.float32 if dtype.kind == "float32" else np.float64
        return np.array([np.nan if v is None else v for v in values], dtype=target)
    return np.array(values, dtype=dtype.numpy_dtype)
