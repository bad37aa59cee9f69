"""Every serving mode against the committed click-through model, real SQLite files and a moved clock."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge_runtime import (
    ConfigError,
    EdgeRuntime,
    InputStatus,
    ModelInputError,
    ModelSettings,
    RuntimeConfig,
    ServingMode,
    TelemetrySettings,
)
from tests.edge_runtime.serving.conftest import Clock, make_runtime, user_row

PRESENT, DEFAULTED, EXPIRED, MISSING = (
    InputStatus.PRESENT,
    InputStatus.DEFAULTED,
    InputStatus.EXPIRED,
    InputStatus.MISSING,
)


def reference(rt: EdgeRuntime, raw_rows: list[list[float | None]]) -> np.ndarray:
    """The model's output computed by hand: defaults, standardisation, then the backend."""
    active = rt.models.active("ctr")
    values = np.array([[np.nan if v is None else float(v) for v in r] for r in raw_rows])
    x = active.manifest.assemble(values)
    return active.backend.run({"features": x})["probability"]


def raw_values(row: dict[str, object], orders: int = 0) -> list[float | None]:
    names = [
        "click_through_rate",
        "number_of_clicks",
        "average_page_duration",
        "days_since_signup",
        "sessions_last_7d",
        "is_premium",
        "avg_order_value",
    ]
    return [float(row[n]) for n in names] + [float(orders)]  # type: ignore[arg-type]


def test_online_features_assemble_in_manifest_order(rt: EdgeRuntime, clock: Clock) -> None:
    p = rt.predict("ctr", [{"user_id": 7}, {"user_id": 12}])
    assert (p.model, p.version, p.mode) == ("ctr", 1, "online")
    assert p.output.shape == (2, 1)
    expected = reference(rt, [raw_values(user_row(7, 0)), raw_values(user_row(12, 0))])
    np.testing.assert_allclose(p.output, expected, rtol=1e-6)
    refs = [f.ref for f in rt.models.active("ctr").manifest.features]
    assert list(p.feature_status) == refs
    assert all(s == [PRESENT, PRESENT] for s in p.feature_status.values())
    assert p.cached == [False, False]
    assert p.latency_s > 0
    d = p.to_dict()
    assert d["feature_status"]["user_data:click_through_rate"] == ["present", "present"]
    assert d["outputs"]["probability"] == p.output.tolist()


def test_missing_entity_uses_defaults_and_says_so(rt: EdgeRuntime) -> None:
    p = rt.predict("ctr", [{"user_id": 999_999}])
    manifest = rt.models.active("ctr").manifest
    defaults = [f.default for f in manifest.features]
    np.testing.assert_allclose(p.output, reference(rt, [defaults]), rtol=1e-6)
    statuses = {ref: s[0] for ref, s in p.feature_status.items()}
    assert statuses["user_data:click_through_rate"] is DEFAULTED
    # a count over no events is a real zero, not a missing value
    assert statuses["user_stream:orders_last_10m"] is PRESENT


def test_expired_features_fall_back_to_defaults(rt: EdgeRuntime, clock: Clock) -> None:
    clock.advance(2 * 86_400 + 1)  # user_data's TTL is 2 days
    rt.features.write_to_online_store("user_data", [user_row(3, clock())])
    p = rt.predict("ctr", [{"user_id": 3}, {"user_id": 4}])
    st = p.feature_status["user_data:number_of_clicks"]
    assert st == [PRESENT, EXPIRED]
    defaults = [f.default for f in rt.models.active("ctr").manifest.features]
    np.testing.assert_allclose(p.output[1:], reference(rt, [defaults]), rtol=1e-6)


def test_streaming_prediction_reads_windowed_event_counts(rt: EdgeRuntime, clock: Clock) -> None:
    before = rt.predict("ctr", [{"user_id": 5}]).output[0, 0]
    rt.features.push_events(
        "orders", [{"user_id": 5, "amount": 20.0, "event_timestamp": clock() - i} for i in range(3)]
    )
    after = rt.predict("ctr", [{"user_id": 5}])
    expected = reference(rt, [raw_values(user_row(5, 0), orders=3)])
    np.testing.assert_allclose(after.output, expected, rtol=1e-6)
    assert after.output[0, 0] != before
    clock.advance(601)  # the 10-minute window has passed
    np.testing.assert_allclose(rt.predict("ctr", [{"user_id": 5}]).output[0, 0], before, rtol=1e-6)


def test_many_rows_run_as_one_batch_and_accept_columns(rt: EdgeRuntime) -> None:
    ids = list(range(1, 151))
    p_rows = rt.predict("ctr", [{"user_id": i} for i in ids])
    p_cols = rt.predict("ctr", {"user_id": np.array(ids)})
    assert p_rows.output.shape == (150, 1)
    np.testing.assert_allclose(p_rows.output, p_cols.output)
    single = np.vstack([rt.predict("ctr", [{"user_id": i}]).output for i in ids[:5]])
    np.testing.assert_allclose(p_rows.output[:5], single, rtol=1e-5)


def test_tensors_mode_runs_the_model_only(rt: EdgeRuntime) -> None:
    x = np.zeros((3, 8), dtype=np.float32)
    p = rt.predict("ctr", inputs={"features": x})
    assert p.mode == "tensors" and p.feature_status == {} and p.cached == [False] * 3
    np.testing.assert_allclose(p.output, rt.models.active("ctr").backend.run({"features": x})["probability"])
    with pytest.raises(ModelInputError, match="inputs"):
        rt.predict("ctr", [{"user_id": 1}], mode="tensors")


def test_precomputed_predictions_with_and_without_fallback(tmp_path: Path, clock: Clock) -> None:
    settings = ModelSettings(name="ctr", mode=ServingMode.PRECOMPUTED, prediction_feature="user_scores:ctr_prediction")
    rt = make_runtime(tmp_path / "d", clock, models=(settings,))
    with rt:
        rt.features.write_to_online_store(
            "user_scores",
            [
                {"user_id": 1, "ctr_prediction": 0.25, "event_timestamp": clock()},
                {"user_id": 2, "ctr_prediction": 0.75, "event_timestamp": clock() - 2 * 86_400},  # past its 1d TTL
            ],
        )
        p = rt.predict("ctr", [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}])
        assert p.mode == "precomputed"
        assert p.output[0, 0] == pytest.approx(0.25)
        assert p.feature_status["user_scores:ctr_prediction"] == [PRESENT, EXPIRED, MISSING]
        assert p.cached == [True, False, False]
        # rows 2 and 3 fell back to the model
        online = rt.predict("ctr", [{"user_id": 2}, {"user_id": 3}], mode="online")
        np.testing.assert_allclose(p.output[1:], online.output, rtol=1e-6)
    strict = ModelSettings(
        name="ctr",
        mode=ServingMode.PRECOMPUTED,
        prediction_feature="user_scores:ctr_prediction",
        fallback_to_model=False,
    )
    with make_runtime(tmp_path / "e", clock, models=(strict,)) as rt2:
        p = rt2.predict("ctr", [{"user_id": 3}])
        assert math.isnan(p.output[0, 0])
        assert p.feature_status["user_scores:ctr_prediction"] == [MISSING]


def test_precomputed_mode_needs_a_prediction_feature(tmp_path: Path, clock: Clock) -> None:
    with make_runtime(tmp_path / "d", clock) as rt, pytest.raises(ConfigError, match="prediction feature"):
        rt.predict("ctr", [{"user_id": 1}], mode="precomputed")


def test_unknown_mode_and_unknown_model(rt: EdgeRuntime) -> None:
    from edge_runtime import ModelNotFoundError

    with pytest.raises(ConfigError, match="unknown serving mode"):
        rt.predict("ctr", [{"user_id": 1}], mode="psychic")
    with pytest.raises(ModelNotFoundError):
        rt.predict("churn", [{"user_id": 1}])


def test_batch_prediction_scores_every_cached_entity(tmp_path: Path, clock: Clock) -> None:
    settings = ModelSettings(name="ctr", prediction_feature="ctr_predictions:probability")
    with make_runtime(tmp_path / "d", clock, models=(settings,)) as rt:
        result = rt.batch_predict("ctr")
        assert (result.rows, result.source_view, result.output_view) == (200, "user_data", "ctr_predictions")
        stored = rt.features.get_online_features(["ctr_predictions:probability"], {"user_id": [1, 2, 200]})
        online = rt.predict("ctr", {"user_id": [1, 2, 200]})
        np.testing.assert_allclose(np.array(stored.values("probability")), online.output[:, 0], rtol=1e-6)
        # precomputed mode serves what batch prediction stored, without running the model
        p = rt.predict("ctr", [{"user_id": 2}], mode="precomputed")
        assert p.cached == [True]
        assert p.output[0, 0] == pytest.approx(online.output[1, 0], rel=1e-6)


def test_scheduled_batch_prediction_runs_in_the_background(rt: EdgeRuntime) -> None:
    import time

    rt.schedule_batch_predict("ctr", 3600)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "ctr" not in rt._scheduler.last:
        time.sleep(0.02)
    last = rt._scheduler.last["ctr"]
    assert not isinstance(last, Exception)
    assert last.rows == 200


def test_telemetry_is_opt_in_and_aggregate_only(tmp_path: Path, clock: Clock) -> None:
    with make_runtime(tmp_path / "off", clock) as rt:
        rt.predict("ctr", [{"user_id": 1}])
        assert rt.telemetry is None
        assert not (tmp_path / "off" / "telemetry.db").exists()
    with make_runtime(
        tmp_path / "on", clock, telemetry=TelemetrySettings(enabled=True, period_s=300, epsilon=None)
    ) as rt:
        for i in range(1, 11):
            rt.predict("ctr", [{"user_id": i}, {"user_id": 10_000 + i}])
        assert rt.telemetry is not None
        rt.telemetry.flush()
        (item,) = rt.telemetry.outbox.pending()
        report = item.payload["models"]["ctr"]
        assert report["predictions"] == 20
        assert report["features"]["user_data:click_through_rate"]["defaulted"] == 10
        text = str(item.payload)
        assert "10001" not in text and "user_id" not in text


def test_from_config_reads_a_profile(tmp_path: Path) -> None:
    profile = tmp_path / "device.toml"
    profile.write_text(
        f'data_dir = "data"\ndefinitions = "{Path(__file__).resolve().parents[3] / "models" / "definitions.toml"}"\n'
        '[runtime]\nthreads = 1\nbackend = "onnxruntime"\n'
        '[[models]]\nname = "ctr"\nmode = "cached"\n'
    )
    with EdgeRuntime.from_config(profile) as rt:
        assert rt.data_dir == tmp_path / "data"
        assert "user_data" in {v["name"] for v in rt.features.stats()}
        assert rt.config.model("ctr").mode is ServingMode.CACHED
        assert rt.status()["models"] == []


def test_runtime_survives_reopen(tmp_path: Path, clock: Clock) -> None:
    make_runtime(tmp_path / "d", clock).close()
    with EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "d"), clock=clock) as rt:
        p = rt.predict("ctr", [{"user_id": 1}])
        assert p.feature_status["user_data:click_through_rate"] == [PRESENT]
        status = rt.status()
        assert status["models"][0]["active"] == 1


def test_warm_up_and_closed_runtime(tmp_path: Path, clock: Clock) -> None:
    from edge_runtime import StoreClosedError

    rt = make_runtime(tmp_path / "d", clock)
    assert rt.warm_up() == {"ctr": 1}
    assert rt.status()["models"][0]["cached_predictions"] == 0
    rt.predict("ctr", [{"user_id": 1}], mode="cached")
    rt.close()
    rt.close()  # idempotent
    with pytest.raises(StoreClosedError, match="closed"):
        rt.predict("ctr", [{"user_id": 1}])
    # the cache outlives the process that filled it
    with EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "d"), clock=clock) as again:
        assert again.status()["models"][0]["cached_predictions"] == 1
