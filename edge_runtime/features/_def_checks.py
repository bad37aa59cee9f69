"""Checks shared by the feature definitions: names, lists, durations, and names SQLite would confuse.

SQLite compares table and column names without regard to ASCII letter case, so ``scores`` and ``SCORES`` name one
table and ``age``/``AGE`` one column. Every name that becomes a SQLite identifier is therefore checked case-
insensitively (definition names are ASCII, so ``str.lower`` is SQLite's own folding).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

from edge_runtime._errors import DefinitionError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Column names the store uses itself; features and keys may not take them.
RESERVED = frozenset({"event_ts", "written_us", "event_timestamp"})


def _error(message: str, *, key: str | None = None, expected: str | None = None, got: object = None) -> DefinitionError:
    """A :class:`DefinitionError` whose message also says what was expected."""
    if expected and expected not in message:
        message = f"{message} (expected {expected})"
    return DefinitionError(message, key=key, expected=expected, got=got)


def _check_name(kind: str, name: object, *, attr: str = "name", owner: str | None = None) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        where = f"{owner}: " if owner else ""
        raise _error(
            f"{where}{kind} {attr} {name!r} is invalid",
            key=attr,
            expected="a name of letters, digits and '_' (not starting with a digit, at most 63 characters)",
            got=name,
        )
    return name


def _seq(value: object, kind: str, attr: str, owner: str) -> tuple[Any, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _error(f"{kind} {owner!r}: {attr} must be a list", key=attr, expected="a list", got=value)
    return tuple(value)


def _duration(value: object, *, kind: str, owner: str, attr: str) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        out = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = dt.timedelta(seconds=float(value))
    else:
        raise _error(
            f"{kind} {owner!r}: {attr} must be a timedelta or a number of seconds, got {value!r}",
            key=attr,
            expected="a timedelta or seconds > 0",
            got=value,
        )
    if out <= dt.timedelta(0):
        raise _error(f"{kind} {owner!r}: {attr} must be positive, got {value!r}", key=attr, expected="> 0", got=value)
    return out


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def check_distinct(owner: str, names: Iterable[tuple[str, str]], *, key: str) -> None:
    """Refuse two ``(kind, name)`` pairs whose names differ only in letter case, naming both."""
    seen: dict[str, tuple[str, str]] = {}
    for kind, name in names:
        prev = seen.setdefault(name.lower(), (kind, name))
        if prev[1] != name:
            raise _error(
                f"{owner}: {kind} {name!r} and {prev[0]} {prev[1]!r} differ only in letter case, and SQLite "
                "column names ignore case",
                key=key,
                expected="names that differ in more than letter case",
                got=name,
            )
