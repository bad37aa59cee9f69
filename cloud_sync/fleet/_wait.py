"""Polling helpers: wait until a condition holds, and fail with a message that says what was last seen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ._errors import ConditionTimeout

#: What a condition may return: a bool, or (ok, detail) where detail says how far along it is.
CheckResult = Any


def _split(result: CheckResult) -> tuple[bool, str]:
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        return bool(result[0]), result[1]
    return bool(result), ""


def wait_until(
    condition: Callable[[], CheckResult],
    timeout: float = 10.0,
    *,
    what: str | None = None,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> float:
    """Poll ``condition`` until it holds; return the seconds it took.

    ``condition`` returns a bool or ``(ok, detail)``; ``detail`` of the last poll (or ``describe()``) goes into
    the :class:`ConditionTimeout` raised after ``timeout`` seconds, with ``what`` (default: the condition's name
    or docstring's first line) naming it. An exception raised by the condition counts as "not yet" and is shown
    in the message if the wait times out. The interval grows from 10 ms to ``interval``.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout}")
    start = time.monotonic()
    deadline = start + timeout
    delay = min(0.01, interval)
    detail = ""
    while True:
        try:
            ok, detail = _split(condition())
        except Exception as exc:  # a store mid-restart, a closed connection: keep polling, report it if it lasts
            ok, detail = False, f"the condition raised {type(exc).__name__}: {exc}"
        if ok:
            return time.monotonic() - start
        now = time.monotonic()
        if now >= deadline:
            if describe is not None:
                try:
                    detail = describe()
                except Exception as exc:
                    detail = f"{detail}\n(describe() raised {type(exc).__name__}: {exc})".strip()
            raise ConditionTimeout(what or _name(condition), timeout, detail)
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, interval)


def _name(condition: Callable[..., Any]) -> str:
    doc = (getattr(condition, "__doc__", None) or "").strip().splitlines()
    if doc and not isinstance(condition, type):
        return doc[0]
    name = getattr(condition, "__name__", None)
    return name if name and name != "<lambda>" else "the condition"
