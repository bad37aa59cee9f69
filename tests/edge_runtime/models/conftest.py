"""Fixtures for the backend tests: every test model, built once per session (see _backend_models.py)."""

from __future__ import annotations

import pytest
from _backend_models import BuiltModel, build_all


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BuiltModel]:
    """Every test model, built once per session in a temporary directory."""
    return build_all(tmp_path_factory.mktemp("backend-models"))
