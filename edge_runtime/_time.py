"""UTC time as integer microseconds since the epoch.

Everything the runtime stores is an ``int`` of microseconds since 1970-01-01 UTC: sub-second precision, no float
rounding in SQLite, and no dependence on the machine's timezone (``TZ`` never changes an answer).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable

import numpy as np

#: A clock returns the current time as epoch seconds (``time.time`` is the default); tests inject their own.
Clock = Callable[[], float]

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_US = 1_000_000


def now_us(clock: Clock = time.time) -> int:
    """The clock's current time in epoch microseconds."""
    return round(clock() * _US)


def to_epoch_us(value: object) -> int:
    """Convert an event time to epoch microseconds.

    Accepts an aware ``datetime``, epoch seconds (``int``/``float``), a ``numpy.datetime64`` (UTC by numpy's
    convention) or a pandas ``Timestamp``. A naive ``datetime`` is refused: guessing its timezone is how stores
    end up shifting times by the local offset.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} has no timezone; pass an aware datetime "
                "(e.g. tzinfo=timezone.utc) or epoch seconds"
            )
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * _US + delta.microseconds
    if isinstance(value, bool):
        raise TypeError("a bool is not a timestamp; pass an aware datetime or epoch seconds")
    if isinstance(value, (int, np.integer)):
        return int(value) * _US
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"timestamp {f} is not finite; pass an aware datetime or epoch seconds")
        return round(f * _US)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError("timestamp is NaT; pass an aware datetime or epoch seconds")
        return int(value.astype("datetime64[us]").astype(np.int64))
    raise TypeError(
        f"cannot use {type(value).__name__} {value!r} as a timestamp; pass an aware datetime or epoch seconds"
    )


def from_epoch_us(us: int) -> _dt.datetime:
    """An aware UTC ``datetime`` for epoch microseconds."""
    return _EPOCH + _dt.timedelta(microseconds=int(us))


def to_seconds(value: object, *, what: str = "duration") -> float:
    """A duration as seconds from a ``timedelta`` or a number of seconds; ``what`` names it in errors."""
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise TypeError(f"{what} must be a timedelta or a number of seconds, got {type(value).__name__} {value!r}")
