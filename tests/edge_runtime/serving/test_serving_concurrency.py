"""Predictions keep flowing, whole and unmixed, while models swap and features are written."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import EdgeRuntime, Entity, FeatureView, Field, InputStatus, RuntimeConfig
from tests.edge_runtime.models._model_factory import expected_output, make_bundle
from tests.edge_runtime.serving.conftest import Clock

USER = Entity(name="user", join_keys=["user_id"])
VIEW = FeatureView(
    name="user",
    entities=[USER],
    schema=[
        Field(name="click_through_rate", dtype="float64"),
        Field(name="number_of_clicks", dtype="float64"),
        Field(name="average_page_duration", dtype="float64"),
    ],
)


def _runtime(tmp_path: Path, clock: Clock) -> EdgeRuntime:
    rt = EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "data"), clock=clock)
    rt.features.apply([USER, VIEW])
    return rt


def test_request_data_feeds_request_refs(tmp_path: Path, clock: Clock) -> None:
    with _runtime(tmp_path, clock) as rt:
        rt.models.install(make_bundle(tmp_path / "b", version=1), activate=True)
        rt.features.write_to_online_store(
            "user",
            [
                {
                    "user_id": 1,
                    "click_through_rate": 0.1,
                    "number_of_clicks": 3.0,
                    "average_page_duration": 9.0,
                    "event_timestamp": clock(),
                }
            ],
        )
        p = rt.predict("ctr", [{"user_id": 1}], request_data={"hour": 13})
        np.testing.assert_allclose(p.output, expected_output(1, np.array([[0.1, 3.0, 9.0, 13.0]])), rtol=1e-5)
        assert p.feature_status["request:hour"] == [InputStatus.PRESENT]
        q = rt.predict("ctr", [{"user_id": 1}])
        assert q.feature_status["request:hour"] == [InputStatus.DEFAULTED]
        per_row = rt.predict("ctr", [{"user_id": 1}, {"user_id": 1}], request_data=[{"hour": 1}, {"hour": 2}])
        np.testing.assert_allclose(
            per_row.output, expected_output(1, np.array([[0.1, 3.0, 9.0, 1.0], [0.1, 3.0, 9.0, 2.0]])), rtol=1e-5
        )


def test_no_failed_or_mixed_predictions_during_model_swaps(tmp_path: Path, clock: Clock) -> None:
    with _runtime(tmp_path, clock) as rt:
        rt.models.install(make_bundle(tmp_path / "b", version=1), activate=True)
        rt.models.install(make_bundle(tmp_path / "b", version=2))
        rows = [{"user_id": i} for i in range(20)]
        x = np.zeros((20, 4))
        expected = {v: expected_output(v, x) for v in (1, 2)}
        stop = threading.Event()
        problems: list[str] = []
        seen = {1: 0, 2: 0}

        def predict_loop() -> None:
            while not stop.is_set():
                try:
                    p = rt.predict("ctr", rows)
                except Exception as exc:  # any failure is a finding
                    problems.append(repr(exc))
                    return
                if not np.allclose(p.output, expected[p.version], rtol=1e-5):
                    problems.append(f"v{p.version} answered with another version's outputs")
                seen[p.version] += 1

        threads = [threading.Thread(target=predict_loop) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in range(10):
            rt.models.activate("ctr", 2)
            time.sleep(0.01)
            rt.models.rollback("ctr")
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert problems == []
        assert seen[1] > 0 and seen[2] > 0


def test_readers_never_see_half_a_feature_batch(tmp_path: Path, clock: Clock) -> None:
    with _runtime(tmp_path, clock) as rt:
        rt.models.install(make_bundle(tmp_path / "b", version=1), activate=True)
        ids = list(range(50))

        def batch(k: int) -> dict[str, list[float]]:
            return {
                "user_id": ids,
                "click_through_rate": [k / 100] * 50,
                "number_of_clicks": [float(k)] * 50,
                "average_page_duration": [float(k)] * 50,
                "event_timestamp": [clock() + k] * 50,
            }

        rt.features.write_to_online_store("user", batch(0))
        stop = threading.Event()
        problems: list[str] = []
        reads = 0

        def read_loop() -> None:
            nonlocal reads
            while not stop.is_set():
                p = rt.predict("ctr", {"user_id": ids}, mode="online")
                if len({round(float(v), 6) for v in p.output[:, 0]}) != 1:
                    problems.append("one prediction batch mixed two feature batches")
                if any(s is not InputStatus.PRESENT for s in p.feature_status["user:number_of_clicks"]):
                    problems.append("a present feature read as missing")
                reads += 1

        reader = threading.Thread(target=read_loop)
        reader.start()
        for k in range(1, 60):
            rt.features.write_to_online_store("user", batch(k))
        stop.set()
        reader.join()
        assert problems == []
        assert reads > 0


def test_a_manifest_feeding_a_string_feature_into_the_input_is_refused(tmp_path: Path, clock: Clock) -> None:
    from edge_runtime import ModelInputError

    with _runtime(tmp_path, clock) as rt:
        rt.features.apply([FeatureView(name="profile", entities=[USER], schema=[Field(name="city", dtype="string")])])
        bundle = make_bundle(
            tmp_path / "b",
            version=1,
            features=["profile:city", "user:number_of_clicks", "user:average_page_duration", "request:hour"],
        )
        rt.models.install(bundle, activate=True)
        with pytest.raises(ModelInputError, match=r"'profile:city' is string"):
            rt.predict("ctr", [{"user_id": 1}])
