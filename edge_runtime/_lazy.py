"""Package attributes loaded on first use: ``__getattr__``/``__dir__`` for an ``__init__`` that keeps imports cheap.

A package lists ``name -> ".submodule"`` and binds ``__getattr__, __dir__ = lazy_attributes(__name__, globals(),
_LAZY)``; a name is imported from its submodule the first time it is read, then cached in the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for the lazily imported ``names``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    return __getattr__, __dir__
