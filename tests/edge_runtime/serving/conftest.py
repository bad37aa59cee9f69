"""Runtimes over real SQLite files and the committed example models, with a clock the tests move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_runtime import EdgeRuntime, ModelSettings, RuntimeConfig, ServingMode

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"
DEFINITIONS = MODELS / "definitions.toml"
T0 = 1_800_000_000.0


class Clock:
    """A settable clock (epoch seconds)."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def user_row(user_id: int, t: float, **overrides: object) -> dict[str, object]:
    """A complete user_data row for ``user_id`` at event time ``t``."""
    row: dict[str, object] = {
        "user_id": user_id,
        "click_through_rate": 0.02 + (user_id % 10) / 100,
        "number_of_clicks": 5 + user_id % 40,
        "average_page_duration": 20.0 + user_id % 60,
        "days_since_signup": 30 * (user_id % 40),
        "sessions_last_7d": user_id % 9,
        "is_premium": user_id % 5 == 0,
        "avg_order_value": 15.0 + user_id % 50,
        "event_timestamp": t,
    }
    row.update(overrides)
    return row


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_runtime(
    data_dir: Path, clock: Clock, *, bundle: str = "ctr-onnx-fp32", models: tuple[ModelSettings, ...] = (), **kw: object
) -> EdgeRuntime:
    config = RuntimeConfig(data_dir=data_dir, definitions=DEFINITIONS, models=models, **kw)  # type: ignore[arg-type]
    rt = EdgeRuntime(config, clock=clock)
    rt.models.install(MODELS / bundle, activate=True)
    rt.features.write_to_online_store("user_data", [user_row(i, clock() - 60) for i in range(1, 201)])
    return rt


@pytest.fixture
def rt(tmp_path: Path, clock: Clock) -> Iterator[EdgeRuntime]:
    runtime = make_runtime(
        tmp_path / "data",
        clock,
        models=(ModelSettings(name="ctr", mode=ServingMode.ONLINE, prediction_feature="user_scores:ctr_prediction"),),
    )
    yield runtime
    runtime.close()


@pytest.fixture
def now() -> float:
    return time.time()
