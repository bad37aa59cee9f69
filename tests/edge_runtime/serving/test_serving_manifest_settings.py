"""The manifest's ``serving`` section: checked at install, merged with the profile field by field.

Regression tests for two bugs: an invalid ``serving.on_write`` installed fine and then every ``predict`` raised a
bare ``ValueError``; a valid ``"recompute"`` was silently dropped as soon as the profile set the model's ``mode``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_runtime import BundleError, EdgeRuntime, ModelSettings, OnWrite, RuntimeConfig, ServingMode
from edge_runtime.models import Manifest
from tests.edge_runtime.serving.conftest import DEFINITIONS, MODELS, Clock, user_row


def _bundle(tmp_path: Path, serving: object, name: str = "b") -> Path:
    dst = tmp_path / name
    shutil.copytree(MODELS / "ctr-onnx-int8", dst)
    (dst / "signature.json").unlink(missing_ok=True)
    raw = json.loads((dst / "manifest.json").read_text())
    raw["serving"] = serving
    (dst / "manifest.json").write_text(json.dumps(raw))
    return dst


def _runtime(tmp_path: Path, clock: Clock, *models: ModelSettings) -> EdgeRuntime:
    rt = EdgeRuntime(RuntimeConfig(data_dir=tmp_path / "data", definitions=DEFINITIONS, models=models), clock=clock)
    rt.features.write_to_online_store("user_data", [user_row(i, clock() - 60) for i in range(1, 5)])
    return rt


@pytest.mark.parametrize(
    ("serving", "field"),
    [
        ({"mode": "cached", "on_write": "bogus"}, "serving.on_write"),
        ({"mode": "fast"}, "serving.mode"),
        ({"prediction_feature": "no-colon"}, "serving.prediction_feature"),
        ({"fallback_to_model": "yes"}, "serving.fallback_to_model"),
        ({"on_wrte": "recompute"}, "serving.on_wrte"),
    ],
)
def test_an_invalid_serving_section_is_refused_at_install_naming_the_field(
    tmp_path: Path, clock: Clock, serving: dict[str, object], field: str
) -> None:
    with pytest.raises(BundleError) as exc:
        Manifest.load(_bundle(tmp_path, serving) / "manifest.json")
    assert exc.value.field == field
    with _runtime(tmp_path, clock) as rt, pytest.raises(BundleError):
        rt.models.install(_bundle(tmp_path, serving, "again"), activate=True)


def test_manifest_on_write_survives_a_profile_that_sets_only_the_mode(tmp_path: Path, clock: Clock) -> None:
    bundle = _bundle(tmp_path, {"mode": "cached", "on_write": "recompute"})
    with _runtime(tmp_path, clock, ModelSettings(name="ctr", mode=ServingMode.CACHED)) as rt:
        rt.models.install(bundle, activate=True)
        rt.predict("ctr", entity_rows=[{"user_id": 1}])
        assert rt._plans["ctr"].on_write is OnWrite.RECOMPUTE


def test_profile_on_write_overrides_the_manifest(tmp_path: Path, clock: Clock) -> None:
    bundle = _bundle(tmp_path, {"mode": "cached", "on_write": "recompute"})
    with _runtime(tmp_path, clock, ModelSettings(name="ctr", on_write=OnWrite.INVALIDATE)) as rt:
        rt.models.install(bundle, activate=True)
        p = rt.predict("ctr", entity_rows=[{"user_id": 1}])
        assert rt._plans["ctr"].on_write is OnWrite.INVALIDATE
        assert rt._plans["ctr"].mode is ServingMode.CACHED, "the mode still comes from the manifest"
        assert p.cached == [False]


def test_nothing_set_anywhere_gives_the_defaults(tmp_path: Path, clock: Clock) -> None:
    with _runtime(tmp_path, clock) as rt:
        rt.models.install(_bundle(tmp_path, None), activate=True)
        rt.predict("ctr", entity_rows=[{"user_id": 1}])
        plan = rt._plans["ctr"]
        assert (plan.mode, plan.on_write) == (ServingMode.ONLINE, OnWrite.INVALIDATE)
        assert ModelSettings(name="ctr").on_write is None, "'not set' is representable"


def test_manifest_fallback_to_model_is_honoured_unless_the_profile_sets_it(tmp_path: Path, clock: Clock) -> None:
    serving = {"mode": "precomputed", "prediction_feature": "user_scores:ctr_prediction", "fallback_to_model": False}
    with _runtime(tmp_path, clock) as rt:
        rt.models.install(_bundle(tmp_path, serving), activate=True)
        rt.predict("ctr", entity_rows=[{"user_id": 1}])
        assert rt._plans["ctr"].fallback_to_model is False
    with _runtime(tmp_path / "2", clock, ModelSettings(name="ctr", fallback_to_model=True)) as rt:
        rt.models.install(_bundle(tmp_path, serving, "c"), activate=True)
        rt.predict("ctr", entity_rows=[{"user_id": 1}])
        assert rt._plans["ctr"].fallback_to_model is True
