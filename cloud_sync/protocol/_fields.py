"""Typed, validating access to the fields of a decoded message body (a msgpack map of untrusted values)."""

from __future__ import annotations

from typing import Any

from cloud_sync._errors import DecodeError

_INT_MAX = 2**63 - 1
_MISSING: Any = object()


class Fields:
    """Reads fields of one body map; every wrong, missing or out-of-range value is a DecodeError naming it."""

    def __init__(self, obj: object, what: str) -> None:
        if type(obj) is not dict:
            raise DecodeError(f"a {what} body must be a map, got {type(obj).__name__}", reason="body")
        self._obj: dict[Any, Any] = obj
        self._what = what

    def _fail(self, key: str, message: str) -> DecodeError:
        return DecodeError(message, reason="body", field=f"{self._what}.{key}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self._obj:
            return self._obj[key]
        if default is _MISSING:
            raise self._fail(key, "is missing")
        return default

    def get_int(self, key: str, *, low: int = 0, high: int = _INT_MAX, default: Any = _MISSING) -> int:
        """An int in ``low..high``."""
        value = self._get(key, default)
        if type(value) is not int or not low <= value <= high:
            raise self._fail(key, f"must be an int in {low}..{high}, got {value!r:.80}")
        return value

    def get_str(self, key: str, *, max_len: int = 256, choices: tuple[str, ...] = (), default: Any = _MISSING) -> str:
        """A str of at most ``max_len`` characters (one of ``choices`` when given)."""
        value = self._get(key, default)
        if type(value) is not str or len(value) > max_len:
            raise self._fail(key, f"must be a str of at most {max_len} characters")
        if choices and value not in choices:
            raise self._fail(key, f"must be one of {', '.join(choices)}, got {value!r:.80}")
        return value

    def get_bytes(self, key: str, *, length: int | None = None, max_len: int = 2**31, default: Any = _MISSING) -> bytes:
        """A bytes value of exactly ``length`` bytes, or at most ``max_len``."""
        value = self._get(key, default)
        if type(value) is not bytes:
            raise self._fail(key, f"must be bytes, got {type(value).__name__}")
        if (length is not None and len(value) != length) or len(value) > max_len:
            want = f"exactly {length}" if length is not None else f"at most {max_len}"
            raise self._fail(key, f"must be {want} bytes, got {len(value)}")
        return value

    def get_list(self, key: str, *, max_len: int = 100_000, default: Any = _MISSING) -> list[Any]:
        """A list (its items are checked by the caller)."""
        value = self._get(key, default)
        if type(value) is not list or len(value) > max_len:
            raise self._fail(key, f"must be an array of at most {max_len} items")
        return value

    def get_map(self, key: str, *, max_len: int = 100_000, default: Any = _MISSING) -> dict[Any, Any]:
        """A dict (its items are checked by the caller)."""
        value = self._get(key, default)
        if type(value) is not dict or len(value) > max_len:
            raise self._fail(key, f"must be a map of at most {max_len} entries")
        return value

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The value as decoded, unchecked."""
        return self._get(key, default)

    def fail(self, key: str, message: str) -> DecodeError:
        """A DecodeError about ``key`` for the caller to raise."""
        return self._fail(key, message)
