"""The public API is exactly the committed list: an export added or removed by accident shows up in review.

Each package's ``__all__`` is a literal list (type checkers read it); ``tests/public_api.json`` holds the
expected names. Changing the API means changing that file in the same commit, on purpose.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPECTED: dict[str, list[str]] = json.loads((ROOT / "tests" / "public_api.json").read_text())


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_all_is_the_committed_list(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == EXPECTED[package], (
        f"{package}.__all__ changed: update tests/public_api.json if the change is intended"
    )
    assert len(set(module.__all__)) == len(module.__all__), f"{package}.__all__ lists a name twice"


@pytest.mark.parametrize("package", sorted(EXPECTED))
def test_all_is_a_literal_list_of_resolvable_names(package: str) -> None:
    module = importlib.import_module(package)
    path = Path(module.__file__ or "")
    tree = ast.parse(path.read_text())
    assigned = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert len(assigned) == 1, f"{path}: __all__ must be assigned exactly once"
    value = assigned[0]
    assert isinstance(value, ast.List) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts
    ), f"{path}: __all__ must be a literal list of strings, so type checkers can read it"
    for name in module.__all__:
        assert getattr(module, name, None) is not None, f"{package}.{name} is listed in __all__ but does not resolve"
