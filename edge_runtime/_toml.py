"""Typed reading of TOML files into frozen dataclasses, with errors naming the file, the key and the expectation."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from ._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

T = TypeVar("T")
_MISSING: Any = object()


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error becomes a :class:`ConfigError` naming the file."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError("file not found", file=p, expected="an existing TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=p, expected="valid TOML") from exc


class TomlTable:
    """A view on one TOML table that knows its file and dotted path, for precise error messages.

    >>> t = TomlTable({"threads": 2}, file="pi.toml", path="runtime")
    >>> t.get("threads", int)
    2
    """

    def __init__(self, data: Mapping[str, Any], *, file: str | Path | None, path: str = "") -> None:
        self.data = data
        self.file = file
        self.path = path

    def key(self, name: str) -> str:
        """The dotted key of ``name`` inside this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str, *, expected: str, got: object = None) -> ConfigError:
        """A :class:`ConfigError` for key ``name`` in this table."""
        return ConfigError(message, file=self.file, key=self.key(name), expected=expected, got=got)

    def get(self, name: str, typ: type[T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        """The value at ``name``, checked against ``typ``; ``default`` when absent (required when not given)."""
        if name not in self.data:
            if default is _MISSING:
                raise self.error(name, "required key is missing", expected=_type_name(typ))
            return default
        value = self.data[name]
        types = typ if isinstance(typ, tuple) else (typ,)
        # bool is an int in Python but never a valid number in a config file.
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
            value = float(value)
        if not ok:
            raise self.error(
                name,
                f"expected {_type_name(typ)}, got {type(value).__name__} {value!r}",
                expected=_type_name(typ),
                got=value,
            )
        return value

    def table(self, name: str, *, required: bool = False) -> TomlTable:
        """The sub-table at ``name`` (an empty one when absent and not required)."""
        value = self.get(name, dict, _MISSING if required else {})
        return TomlTable(value, file=self.file, path=self.key(name))

    def tables(self, name: str) -> list[TomlTable]:
        """An array of tables (``[[name]]``), each as a :class:`TomlTable`."""
        items = self.get(name, list, [])
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{i}]", f"expected a table, got {type(item).__name__}", expected="table")
            out.append(TomlTable(item, file=self.file, path=f"{self.key(name)}[{i}]"))
        return out

    def check_unknown(self, allowed: set[str] | frozenset[str]) -> None:
        """Refuse keys this table does not define (typos should not pass silently)."""
        for name in self.data:
            if name not in allowed:
                raise self.error(
                    name, f"unknown key; expected one of {', '.join(sorted(allowed))}", expected="a known key"
                )


def _type_name(typ: type | tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "table"}
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(names.get(t, t.__name__) for t in types)
