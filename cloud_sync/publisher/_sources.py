"""Reading the rows to publish: Parquet, CSV, JSON lines, pandas DataFrames and Python rows, as columns.

Everything becomes ``{column: list | np.ndarray}``, which :meth:`FeatureBatch.from_columns` turns into typed
columns. Timestamps: aware datetimes, ``datetime64`` (UTC), epoch seconds, or ISO-8601 strings *with* an offset
(``2026-01-31T12:00:00Z``); a string without an offset is refused rather than guessed. Parquet needs pyarrow
(``pip install 'edge-runtime[parquet]'``), imported only when a Parquet file is read.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cloud_sync._errors import SourceError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PYARROW_HINT = "reading Parquet needs pyarrow: pip install 'edge-runtime[parquet]' (or pip install pyarrow)"

Columns = dict[str, Any]


def read_columns(data: Any, *, timestamp_columns: Iterable[str] = (), source: str | None = None) -> Columns:
    """Any supported input as ``{column: values}``.

    ``data`` is a path (``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``/``.json`` with one object per
    line), a pandas DataFrame, a list of row dicts, or a dict of columns. ``timestamp_columns`` are parsed from
    ISO-8601 strings where they are strings.
    """
    ts_cols = tuple(timestamp_columns)
    if isinstance(data, (str, Path)):
        path = Path(data)
        name = source or str(path)
        suffix = path.suffix.lower()
        if not path.is_file():
            raise SourceError("no such file", source=name)
        if suffix in PARQUET_SUFFIXES:
            return read_parquet(path)
        if suffix in CSV_SUFFIXES:
            return _parse_timestamps(read_csv(path), ts_cols, name)
        if suffix in JSONL_SUFFIXES:
            return _parse_timestamps(rows_to_columns(read_jsonl(path), name), ts_cols, name)
        raise SourceError(
            f"unknown file type {suffix!r}; expected .parquet, .pq, .csv, .jsonl, .ndjson or .json (JSON lines)",
            source=name,
        )
    name = source or type(data).__name__
    if hasattr(data, "columns") and hasattr(data, "to_dict") and hasattr(data, "__getitem__"):
        return {str(col): data[col] for col in data.columns}  # a pandas DataFrame: Series go through as they are
    if isinstance(data, Mapping):
        cols = {str(k): (v if hasattr(v, "__len__") else list(v)) for k, v in data.items()}
        return _parse_timestamps(cols, ts_cols, name)
    if isinstance(data, (list, tuple)):
        return _parse_timestamps(rows_to_columns(data, name), ts_cols, name)
    raise SourceError(
        "expected a file path, a pandas DataFrame, a list of row dicts or a dict of columns, "
        f"got {type(data).__name__}",
        source=name,
    )


def rows_to_columns(rows: Iterable[Any], source: str) -> Columns:
    """A list of row dicts as columns; a key missing from a row is a missing value (None)."""
    rows = list(rows)
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SourceError(f"row {i} is a {type(row).__name__}, not a dict", source=source)
        names.update(dict.fromkeys(row))
    return {str(name): [row.get(name) for row in rows] for name in names}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (blank lines skipped)."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise SourceError(f"line {lineno} is not valid JSON ({exc})", source=str(path)) from exc
            if not isinstance(row, dict):
                raise SourceError(f"line {lineno} is not a JSON object", source=str(path))
            rows.append(row)
    return rows


def read_csv(path: Path) -> Columns:
    """A CSV file with a header row; each column becomes int, float, bool or string (empty cells: missing)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError("the file is empty; a header row is required", source=str(path)) from None
        if len(set(header)) != len(header) or any(not h for h in header):
            raise SourceError(f"the header must name every column once, got {header}", source=str(path))
        raw: list[list[str]] = [[] for _ in header]
        for lineno, record in enumerate(reader, 2):
            if not record:
                continue
            if len(record) != len(header):
                raise SourceError(
                    f"line {lineno} has {len(record)} fields, the header has {len(header)}", source=str(path)
                )
            for col, value in zip(raw, record, strict=True):
                col.append(value)
    return {name: _infer_text(values) for name, values in zip(header, raw, strict=True)}


def _infer_text(values: list[str]) -> list[Any]:
    present = [v for v in values if v != ""]
    for convert in (_as_int, _as_float, _as_bool):
        try:
            converted = [convert(v) for v in present]
        except ValueError:
            continue
        it = iter(converted)
        return [None if v == "" else next(it) for v in values]
    return [None if v == "" else v for v in values]


def _as_int(text: str) -> int:
    return int(text)


def _as_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) and text.strip().lower() not in ("nan", "inf", "-inf"):
        raise ValueError(text)
    return value


def _as_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ValueError(text)


def parse_timestamp(value: str, *, column: str, source: str) -> _dt.datetime | float:
    """An ISO-8601 string with an offset as an aware datetime, or a number as epoch seconds; SourceError for a
    naive or unparsable one."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise SourceError(
            f"column {column!r}: {value!r} is not an ISO-8601 timestamp (like 2026-01-31T12:00:00Z)", source=source
        ) from None
    if parsed.tzinfo is None:
        raise SourceError(
            f"column {column!r}: {value!r} has no timezone; add Z or an offset like +00:00", source=source
        )
    return parsed


def _parse_timestamps(cols: Columns, ts_cols: tuple[str, ...], source: str) -> Columns:
    for name in ts_cols:
        values = cols.get(name)
        if values is None or not isinstance(values, list):
            continue
        if any(isinstance(v, str) for v in values):
            cols[name] = [parse_timestamp(v, column=name, source=source) if isinstance(v, str) else v for v in values]
    return cols


def read_parquet(path: Path) -> Columns:
    """A Parquet file as columns (pyarrow); timestamp columns become ``datetime64[us]`` (UTC)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise SourceError(PYARROW_HINT, source=str(path)) from exc
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"cannot read Parquet ({exc})", source=str(path)) from exc
    out: Columns = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        typ = column.type
        if pa.types.is_timestamp(typ):
            # Arrow stores UTC instants whatever the tz annotation; as numpy datetime64 they stay UTC.
            ints = column.cast(pa.timestamp("us", tz=typ.tz)).cast(pa.int64())
            values = ints.to_pylist()
            if column.null_count:
                out[name] = [None if v is None else _dt_from_us(v) for v in values]
            else:
                import numpy as np

                out[name] = np.asarray(values, dtype=np.int64).view("datetime64[us]")
        elif column.null_count == 0 and (
            pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
        ):
            out[name] = column.to_numpy()
        else:
            out[name] = column.to_pylist()
    return out


def _dt_from_us(us: int) -> _dt.datetime:
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=us)
