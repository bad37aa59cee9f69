"""Cached predictions hold only for the model version and the feature values they were computed from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime import (
    EdgeRuntime,
    FeatureStore,
    InputStatus,
    ModelSettings,
    OnWrite,
    RowValidationError,
    ServingMode,
)
from edge_runtime.models import package_bundle
from tests.edge_runtime.serving.conftest import MODELS, Clock, make_runtime, user_row


def cached_runtime(tmp_path: Path, clock: Clock, on_write: OnWrite = OnWrite.INVALIDATE) -> EdgeRuntime:
    settings = ModelSettings(name="ctr", mode=ServingMode.CACHED, on_write=on_write)
    return make_runtime(tmp_path / "data", clock, models=(settings,))


def test_miss_then_hit_returns_the_same_answer(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        first = rt.predict("ctr", [{"user_id": 1}])
        second = rt.predict("ctr", [{"user_id": 1}])
        assert (first.cached, second.cached) == ([False], [True])
        np.testing.assert_array_equal(first.output, second.output)
        assert second.feature_status == first.feature_status
        assert rt.prediction_cache.count("ctr") == 1
        online = rt.predict("ctr", [{"user_id": 1}], mode="online")
        np.testing.assert_allclose(second.output, online.output)


def test_mixed_batches_compute_only_the_misses(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 2}, {"user_id": 4}])
        p = rt.predict("ctr", [{"user_id": i} for i in range(1, 6)])
        assert p.cached == [False, True, False, True, False]
        online = rt.predict("ctr", {"user_id": [1, 2, 3, 4, 5]}, mode="online")
        np.testing.assert_allclose(p.output, online.output, rtol=1e-6)
        assert rt.prediction_cache.count("ctr") == 5


def test_a_feature_write_invalidates_in_the_same_transaction(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        before = rt.predict("ctr", [{"user_id": 3}, {"user_id": 4}])
        rt.features.write_to_online_store("user_data", [user_row(3, clock(), click_through_rate=0.4)])
        after = rt.predict("ctr", [{"user_id": 3}, {"user_id": 4}])
        assert after.cached == [False, True]
        assert after.output[0, 0] != before.output[0, 0]


def test_an_older_event_does_not_invalidate(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 3}])
        rt.features.write_to_online_store("user_data", [user_row(3, clock() - 3600, click_through_rate=0.4)])
        assert rt.predict("ctr", [{"user_id": 3}]).cached == [True]


def test_writes_from_another_process_connection_invalidate_too(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 5}, {"user_id": 6}])
        # a separate store object: its own connections, no listener registered by the runtime
        with FeatureStore(tmp_path / "data" / "features.db", clock=clock) as other:
            other.write_to_online_store("user_data", [user_row(5, clock(), sessions_last_7d=8)])
            other.delete_entity({"user_id": 6})
        p = rt.predict("ctr", [{"user_id": 5}, {"user_id": 6}])
        assert p.cached == [False, False]
        assert p.feature_status["user_data:sessions_last_7d"] == [InputStatus.PRESENT, InputStatus.DEFAULTED]


def test_pushed_events_invalidate_and_windows_bound_validity(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 7}])
        assert rt.predict("ctr", [{"user_id": 7}]).cached == [True]
        rt.features.push_events("orders", [{"user_id": 7, "amount": 3.0, "event_timestamp": clock()}])
        assert rt.predict("ctr", [{"user_id": 7}]).cached == [False]
        assert rt.predict("ctr", [{"user_id": 7}]).cached == [True]
        clock.advance(6)  # stream aggregates slide with time: a cached answer that reads them is short-lived
        assert rt.predict("ctr", [{"user_id": 7}]).cached == [False]


def test_ttl_expiry_of_an_input_ends_the_cached_answer(tmp_path: Path, clock: Clock) -> None:
    settings = ModelSettings(name="ctr", mode=ServingMode.CACHED)
    with make_runtime(tmp_path / "d", clock, models=(settings,)) as rt:
        # push the stream bound out of the way: only the TTL should matter here
        first = rt.predict("ctr", [{"user_id": 8}])
        assert first.feature_status["user_data:avg_order_value"] == [InputStatus.PRESENT]
        clock.advance(2 * 86_400)  # user_data rows were written 60 s before T0 with a 2-day TTL
        p = rt.predict("ctr", [{"user_id": 8}])
        assert p.cached == [False]
        assert p.feature_status["user_data:avg_order_value"] == [InputStatus.EXPIRED]


def test_a_new_model_version_invalidates(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 9}])
        src = MODELS / "ctr-onnx-int8"
        v2 = package_bundle(
            src / "model.onnx",
            tmp_path / "ctr-v2",
            name="ctr",
            version=2,
            features=[f.to_dict() for f in rt.models.active("ctr").manifest.features],
        )
        rt.models.install(v2, activate=True)
        p = rt.predict("ctr", [{"user_id": 9}])
        assert (p.version, p.cached) == (2, [False])
        assert rt.predict("ctr", [{"user_id": 9}]).cached == [True]
        rt.models.rollback("ctr")
        p = rt.predict("ctr", [{"user_id": 9}])
        assert (p.version, p.cached) == (1, [False])


def test_recompute_on_write_refreshes_the_cache_after_the_write(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock, on_write=OnWrite.RECOMPUTE) as rt:
        rt.predict("ctr", [{"user_id": 10}])
        rt.features.write_to_online_store("user_data", [user_row(10, clock(), number_of_clicks=90)])
        assert rt.wait_for_recompute(10)
        p = rt.predict("ctr", [{"user_id": 10}])
        assert p.cached == [True], "the runtime's worker recomputed the prediction after the write"
        online = rt.predict("ctr", [{"user_id": 10}], mode="online")
        np.testing.assert_allclose(p.output, online.output, rtol=1e-6)


def test_request_data_is_part_of_the_cache_key(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        a = rt.predict("ctr", [{"user_id": 11}], request_data={"channel": "web"})
        b = rt.predict("ctr", [{"user_id": 11}], request_data={"channel": "app"})
        c = rt.predict("ctr", [{"user_id": 11}], request_data={"channel": "web"})
        assert (a.cached, b.cached, c.cached) == ([False], [False], [True])


def test_a_racing_feature_write_keeps_a_stale_answer_out(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        rt.predict("ctr", [{"user_id": 12}])  # creates the cache table and triggers
        cache = rt.prediction_cache
        plan = rt._plan("ctr")
        seen = cache.data_version()
        with FeatureStore(tmp_path / "data" / "features.db", clock=clock) as other:
            other.write_to_online_store("user_data", [user_row(13, clock())])
        stored = cache.put_many(plan.cache, [((13,), "", b"x" * 8, 2**62)], plan.version, seen_version=seen)
        assert stored is False
        assert rt.predict("ctr", [{"user_id": 13}]).cached == [False]


def test_rows_without_their_join_keys_are_refused_in_every_mode(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        for mode in ("cached", "online"):
            with pytest.raises(RowValidationError, match="join key 'user_id' is missing") as info:
                rt.predict("ctr", [{"user_id": 1}, {}], mode=mode)
            assert (info.value.row, info.value.column) == (1, "user_id")
        assert rt.prediction_cache.count("ctr") == 0


@pytest.mark.parametrize("bundle", ["ctr-tflite-int8", "ctr-onnx-int8"])
def test_cached_mode_on_every_committed_variant(tmp_path: Path, clock: Clock, bundle: str) -> None:
    settings = ModelSettings(name="ctr", mode=ServingMode.CACHED)
    with make_runtime(tmp_path / "d", clock, bundle=bundle, models=(settings,)) as rt:
        a = rt.predict("ctr", [{"user_id": 1}, {"user_id": 2}])
        b = rt.predict("ctr", [{"user_id": 1}, {"user_id": 2}])
        assert b.cached == [True, True]
        np.testing.assert_array_equal(a.output, b.output)


def test_many_row_lookups_and_numpy_keys(tmp_path: Path, clock: Clock) -> None:
    with cached_runtime(tmp_path, clock) as rt:
        ids = np.arange(1, 121)
        first = rt.predict("ctr", {"user_id": ids})
        again = rt.predict("ctr", [{"user_id": np.int64(i)} for i in ids])
        assert first.cached == [False] * 120
        assert again.cached == [True] * 120
        np.testing.assert_array_equal(first.output, again.output)


def test_composite_keys_use_row_value_lookups(tmp_path: Path) -> None:
    import time

    from edge_runtime.serving._cache import OutputLayout, PredictionCache

    cache = PredictionCache(tmp_path / "c.db", clock=time.time)
    layout = OutputLayout((("y", np.dtype(np.float32), (1,)),), status_width=0)
    model = cache.model("m", 1, ("shop", "item"), layout, ())
    items = [
        ((s, i), "", layout.pack({"y": np.array([[s * 10 + i]], np.float32)}, 0), 2**62)
        for s in range(3)
        for i in range(5)
    ]
    assert model.put_many(items, 1, seen_version=cache.data_version())
    found = model.get_many([((s, i), "") for s in range(3) for i in range(5)] + [((9, 9), "")], 1, 0)
    assert len(found) == 15
    assert np.frombuffer(found[((2, 3), "")], np.float32)[0] == 23
    assert model.get_many([((1, 1), "")], 2, 0) == {}  # another version
    cache.close()


def test_recompute_on_write_runs_off_the_writers_thread(tmp_path: Path, clock: Clock) -> None:
    """The writer (an app, the sync agent's only worker) returns after its commit; the model runs elsewhere."""
    import threading

    from edge_runtime.serving import _modes

    with cached_runtime(tmp_path, clock, on_write=OnWrite.RECOMPUTE) as rt:
        rt.predict("ctr", [{"user_id": 11}])
        threads: list[str] = []
        real = _modes.predict_cached

        def spy(*args: object, **kwargs: object) -> object:
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)  # type: ignore[arg-type]

        import edge_runtime.serving._runtime as runtime_module

        runtime_module.predict_cached = spy  # type: ignore[assignment]
        try:
            rt.features.write_to_online_store("user_data", [user_row(i, clock(), number_of_clicks=3) for i in (11, 12)])
            writer = threading.current_thread().name
            assert rt.wait_for_recompute(10)
            assert writer not in threads, "nothing ran the model on the writer's thread"
        finally:
            runtime_module.predict_cached = real
        assert threads == ["edge-runtime-recompute"], "one coalesced recompute on the runtime's worker"
        assert rt.predict("ctr", [{"user_id": 11}, {"user_id": 12}]).cached == [True, True]
