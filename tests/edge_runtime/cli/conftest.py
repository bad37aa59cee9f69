"""A seeded data directory (real SQLite files, the committed int8 model) for the device CLI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from _cli_helpers import seed_data_dir


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return seed_data_dir(tmp_path / "data")
