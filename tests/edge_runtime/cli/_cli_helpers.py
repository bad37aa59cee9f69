"""Helpers for the device CLI tests: a seeded data directory and a profile that points at it."""

from __future__ import annotations

import time
from pathlib import Path

from edge_runtime import EdgeRuntime, RuntimeConfig

ROOT = Path(__file__).resolve().parents[3]
MODELS = ROOT / "models"


def seed_data_dir(data_dir: Path) -> Path:
    """Definitions applied, ctr-onnx-int8 active, users 1-20 in user_data (user 2 past its TTL), scores for 1-5."""
    now = time.time()
    with EdgeRuntime(RuntimeConfig(data_dir=data_dir, definitions=MODELS / "definitions.toml")) as rt:
        rt.models.install(MODELS / "ctr-onnx-int8", activate=True)
        rt.features.write_to_online_store(
            "user_data",
            [
                {
                    "user_id": i,
                    "click_through_rate": 0.03 + i / 200,
                    "number_of_clicks": 3 * i,
                    "average_page_duration": 30.0 + i,
                    "days_since_signup": 40 * i,
                    "sessions_last_7d": i % 7,
                    "is_premium": i % 4 == 0,
                    "avg_order_value": 20.0 + i,
                    "event_timestamp": now - (3 * 86400 if i == 2 else 60),
                }
                for i in range(1, 21)
            ],
        )
        rt.features.write_to_online_store(
            "user_scores", [{"user_id": i, "ctr_prediction": i / 10, "event_timestamp": now - 60} for i in range(1, 6)]
        )
    return data_dir


def write_profile(path: Path, data_dir: Path, *, sync: bool = False, telemetry: bool = False) -> Path:
    """A device profile over ``data_dir`` serving ctr with precomputed scores from user_scores."""
    text = f"""
profile = "test-device"
data_dir = "{data_dir}"

[runtime]
threads = 1

[telemetry]
enabled = {"true" if telemetry else "false"}

[[models]]
name = "ctr"
prediction_feature = "user_scores:ctr_prediction"
fallback_to_model = false
"""
    if sync:
        text += """
[sync]
broker = "mqtt://127.0.0.1:1"
device_id = "pi-kitchen"
"""
    path.write_text(text)
    return path
