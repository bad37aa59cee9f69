"""Model bundles: packaging, the manifest format, verification and archives, on real ONNX models."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _model_factory import FEATURES, expected_output, make_bundle, sample_inputs, write_mlp
from hypothesis import HealthCheck as HypothesisHealthCheck
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime import BundleError, HealthCheckError, IntegrityError
from edge_runtime.cli import main
from edge_runtime.models import (
    Bundle,
    FeatureInput,
    HealthCheck,
    Manifest,
    Quantization,
    TensorInfo,
    check_health,
    open_backend,
    open_bundle,
    package_bundle,
    verify_bundle,
)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path, version=3)


def _rewrite_manifest(bundle_dir: Path, **changes: Any) -> None:
    manifest = Manifest.load(bundle_dir / "manifest.json")
    (bundle_dir / "manifest.json").write_bytes(dataclasses.replace(manifest, **changes).to_json())


# --- packaging ----------------------------------------------------------------------------------------------------


def test_package_derives_tensors_and_computes_expected_outputs(bundle: Path) -> None:
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx"]
    m = Manifest.load(bundle / "manifest.json")
    assert (m.name, m.version, m.format, m.model_file) == ("ctr", 3, "onnx", "model.onnx")
    assert m.inputs == (TensorInfo("x", "float32", (None, 4)),)
    assert m.outputs == (TensorInfo("y", "float32", (None, 1)),)
    assert [f.ref for f in m.features] == FEATURES
    assert m.created_at.endswith("Z")
    assert len(m.created_at) == len("2026-01-01T00:00:00.000000Z")
    assert m.health_check is not None
    np.testing.assert_allclose(
        m.health_check.expected_arrays()["y"], expected_output(3, sample_inputs()), rtol=0, atol=1e-6
    )
    raw = json.loads((bundle / "manifest.json").read_text())
    assert list(raw)[:8] == [
        "format_version",
        "name",
        "version",
        "format",
        "model_file",
        "sha256",
        "size",
        "created_at",
    ]
    assert raw["size"] == (bundle / "model.onnx").stat().st_size


def test_package_with_everything_explicit(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "m.onnx", seed=5)
    x = sample_inputs(2)
    out = package_bundle(
        model,
        tmp_path / "b",
        name="ctr.int8",
        version=7,
        inputs=[{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        outputs=[TensorInfo("y", "float32", (None, 1))],
        features=[
            FeatureInput("user:ctr", default=0.1, mean=0.2, std=0.5),
            {"ref": "user:clicks", "default": 3},
            "user:duration",
            "request:hour",
        ],
        output_labels=["p_click"],
        quantization="dynamic-int8",
        health_check={"inputs": {"x": x}, "expected": {"y": expected_output(5, x)}, "atol": 1e-5},
        metadata={"trained_on": "synthetic"},
        serving={"mode": "online"},
    )
    m = Manifest.load(out / "manifest.json")
    assert m.outputs[0].labels == ("p_click",)
    assert m.features[0] == FeatureInput("user:ctr", 0.1, 0.2, 0.5)
    assert m.features[1].default == 3.0
    assert m.quantization == Quantization("dynamic-int8", "")
    assert m.metadata == {"trained_on": "synthetic"}
    assert m.serving == {"mode": "online"}
    assert verify_bundle(out) == m


def test_package_refuses_expected_outputs_the_model_does_not_produce(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "m.onnx", seed=5)
    x = sample_inputs(2)
    with pytest.raises(HealthCheckError, match="off by"):
        package_bundle(
            model,
            tmp_path / "b",
            name="ctr",
            version=1,
            health_check={"inputs": x, "expected": expected_output(6, x), "atol": 1e-5},
        )
    assert not (tmp_path / "b").exists()


def test_package_refuses_a_file_that_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not a protobuf")
    with pytest.raises(BundleError, match=r"junk.onnx"):
        package_bundle(junk, tmp_path / "b", name="ctr", version=1)
    with pytest.raises(BundleError, match="does not exist"):
        package_bundle(tmp_path / "absent.onnx", tmp_path / "b", name="ctr", version=1)


def test_package_rejects_feature_count_that_does_not_match_the_input(tmp_path: Path) -> None:
    model = write_mlp(tmp_path / "m.onnx", seed=1)
    with pytest.raises(BundleError, match="features: 2 features listed but input 'x' has width 4"):
        package_bundle(model, tmp_path / "b", name="ctr", version=1, features=["a:b", "a:c"])


def test_package_replaces_an_existing_bundle_directory(tmp_path: Path) -> None:
    first = make_bundle(tmp_path, version=1, seed=1)
    second = make_bundle(tmp_path, version=1, seed=2)
    assert first == second
    np.testing.assert_allclose(
        Manifest.load(second / "manifest.json").health_check.expected_arrays()["y"],  # type: ignore[union-attr]
        expected_output(2, sample_inputs()),
        atol=1e-6,
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- archives -----------------------------------------------------------------------------------------------------


def test_archive_roundtrip_is_reproducible(tmp_path: Path) -> None:
    archive = make_bundle(tmp_path, version=2, archive=True)
    assert archive.name == "ctr-v2.tar.gz"
    assert archive.is_file()
    assert verify_bundle(archive).version == 2
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["ctr-v2/manifest.json", "ctr-v2/model.onnx"]
    with open_bundle(archive) as b:
        manifest_bytes = b.manifest_bytes
    # Re-archiving the same directory gives identical bytes (no timestamps or owners inside).
    from edge_runtime.models._archive import write_archive

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    (unpacked / "manifest.json").write_bytes(manifest_bytes)
    with tarfile.open(archive) as tar:
        (unpacked / "model.onnx").write_bytes(tar.extractfile("ctr-v2/model.onnx").read())  # type: ignore[union-attr]
    again = write_archive(unpacked, tmp_path / "again.tar.gz", arcname="ctr-v2")
    assert again.read_bytes() == archive.read_bytes()


@pytest.mark.parametrize(
    ("entry", "kind"),
    [("../evil", "file"), ("/abs/manifest.json", "file"), ("a/b/c/manifest.json", "file"), ("link", "symlink")],
)
def test_unsafe_archives_are_refused(tmp_path: Path, bundle: Path, entry: str, kind: str) -> None:
    import io

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in bundle.iterdir():
            tar.add(f, arcname=f"b/{f.name}")
        info = tarfile.TarInfo(entry)
        if kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match=r"evil.tar.gz"):
        verify_bundle(archive)
    assert not (tmp_path.parent / "evil").exists()


def test_a_file_that_is_not_an_archive_is_a_bundle_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tar.gz"
    fake.write_bytes(b"nope")
    with pytest.raises(BundleError, match=r"not a readable .tar.gz"):
        verify_bundle(fake)
    with pytest.raises(BundleError, match="does not exist"):
        verify_bundle(tmp_path / "missing.tar.gz")


# --- verification -------------------------------------------------------------------------------------------------


def test_verify_detects_a_corrupted_model_file(bundle: Path) -> None:
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256") as info:
        verify_bundle(bundle)
    assert info.value.field == "sha256"
    assert info.value.path == str(model)


def test_verify_detects_a_truncated_model_file(bundle: Path) -> None:
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="the manifest declares") as info:
        verify_bundle(bundle)
    assert info.value.field == "size"


def test_verify_detects_a_missing_model_file(bundle: Path) -> None:
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model file 'model.onnx' is missing"):
        verify_bundle(bundle)


def test_verify_detects_a_missing_manifest(bundle: Path) -> None:
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest file is missing"):
        verify_bundle(bundle)


def test_wrong_manifest_sha_is_an_integrity_error(bundle: Path) -> None:
    _rewrite_manifest(bundle, sha256="0" * 64)
    with pytest.raises(IntegrityError, match="sha256"):
        verify_bundle(bundle)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", 0, "version: version 0 must be an integer >= 1"),
        ("version", "2", "version: version '2' must be an integer >= 1"),
        ("format", "pt", "format: format 'pt' must be one of onnx, tflite"),
        ("sha256", "ABC", "sha256: sha256 must be 64 lowercase hex characters"),
        ("size", -1, "size: size -1 must be a non-negative integer"),
        ("model_file", "../model.onnx", "model_file: model_file '../model.onnx' must be a plain file name"),
        ("created_at", "yesterday", "created_at: created_at 'yesterday' must be ISO-8601 UTC"),
        ("name", "has space", "name: name 'has space' must be 1-128 characters"),
        ("format_version", 2, "format_version: unsupported format_version 2"),
        ("surprise", 1, "manifest: unknown keys ['surprise']"),
        ("inputs", [], "inputs: at least one tensor is required"),
        ("inputs", [{"name": "x", "dtype": "complex", "shape": [None, 4]}], "inputs[0].dtype: unknown dtype"),
        ("inputs", [{"name": "x", "dtype": "float32"}], "inputs[0].shape: is required"),
        ("outputs", [{"name": "y", "dtype": "float32", "shape": [-1]}], "outputs[0].shape: dimension -1"),
        ("features", [{"ref": "nocolon"}], "features[0].ref: ref 'nocolon' must look like 'view:feature'"),
        ("features", [{"ref": "a:b", "mean": 1.0}], "features[0].mean: mean and std must be given together"),
        ("features", [{"ref": "a:b", "mean": 1.0, "std": 0}], "features[0].std: std 0 must be a finite number > 0"),
        ("quantization", {"scheme": "int4", "notes": ""}, "quantization.scheme: unknown scheme 'int4'"),
        ("health_check", {"inputs": {"z": [[1]]}, "expected": {"y": [[1]]}}, "health_check: inputs name ['z']"),
        ("health_check", {"inputs": {"x": [[1, 2], [3]]}, "expected": {"y": [1]}}, "health_check.inputs.x: not a"),
        ("serving", [1], "serving: must be an object or null"),
    ],
)
def test_manifest_errors_name_the_file_and_the_field(bundle: Path, field: str, value: object, message: str) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert info.value.path == str(path)


def test_missing_required_key_and_bad_json(bundle: Path) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    del data["sha256"]
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="sha256: is required"):
        Manifest.load(path)
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Manifest.load(path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HypothesisHealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(Manifest.__dataclass_fields__)), value=_json_values)
def test_any_manifest_value_gives_a_manifest_or_a_bundle_error(bundle: Path, key: str, value: object) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data[key] = value
    message = ""
    try:
        m = Manifest.from_dict(data, path="m.json")
    except BundleError as exc:
        message = str(exc)
    if message:
        assert message.startswith("m.json: ")
    else:
        assert Manifest.from_json(m.to_json()) == m


def test_manifest_json_roundtrip_is_exact(bundle: Path) -> None:
    raw = (bundle / "manifest.json").read_bytes()
    assert Manifest.from_json(raw).to_json() == raw


# --- features and health checks -----------------------------------------------------------------------------------


def test_assemble_fills_defaults_then_standardises() -> None:
    m = Manifest(
        name="m",
        version=1,
        format="onnx",
        model_file="model.onnx",
        sha256="0" * 64,
        size=1,
        inputs=(TensorInfo("x", "float32", (None, 3)),),
        outputs=(TensorInfo("y", "float32", (None, 1)),),
        features=(FeatureInput("a:x", 5.0), FeatureInput("a:y", 1.0, mean=2.0, std=4.0), FeatureInput("r:z", 0.0)),
    )
    x = m.assemble(np.array([[1.0, np.nan, np.nan], [np.nan, 10.0, 3.0]]))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([[1.0, -0.25, 0.0], [5.0, 2.0, 3.0]], dtype=np.float32))
    with pytest.raises(BundleError, match="got 2 feature columns"):
        m.assemble(np.zeros((1, 2)))


def test_check_health_reports_errors_and_a_mismatched_signature(bundle: Path) -> None:
    b = Bundle.open(bundle)
    backend = open_backend(b.model_path)
    try:
        errors = check_health(backend, b.manifest)
        assert set(errors) == {"y"}
        assert errors["y"] <= 1e-5
        hc = b.manifest.health_check
        assert hc is not None
        wrong = HealthCheck(inputs=hc.inputs, expected={"y": np.zeros((3, 1)).tolist()}, atol=1e-3)
        with pytest.raises(HealthCheckError, match="ctr v3: output 'y' is off by"):
            check_health(backend, dataclasses.replace(b.manifest, health_check=wrong))
        renamed = dataclasses.replace(
            b.manifest, inputs=(TensorInfo("features", "float32", (None, 4)),), health_check=None
        )
        with pytest.raises(HealthCheckError, match=r"manifest inputs \['features'\] but the model has \['x'\]"):
            check_health(backend, renamed)
        assert check_health(backend, dataclasses.replace(b.manifest, health_check=None)) == {}
    finally:
        backend.close()


# --- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_package_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_mlp(tmp_path / "m.onnx", seed=4)
    np.savez(tmp_path / "h.npz", x=sample_inputs())
    features = tmp_path / "features.json"
    features.write_text(json.dumps([{"ref": "user:ctr", "default": 0.5, "mean": 0.1, "std": 0.2}, "user:clicks"]))
    argv = ["models", "package", str(model), "--out", str(tmp_path / "b"), "--name", "ctr", "--version", "4"]
    argv += ["--features-file", str(features), "--feature", "user:duration=2.5", "--feature", "request:hour"]
    argv += ["--health-inputs", str(tmp_path / "h.npz"), "--atol", "1e-5", "--labels", "y=p_click"]
    argv += ["--quantization", "none", "--metadata", '{"auc": 0.9}', "--archive"]
    assert main(argv) == 0
    archive = tmp_path / "b.tar.gz"
    assert f"wrote {archive}" in capsys.readouterr().out
    m = verify_bundle(archive)
    assert [f.ref for f in m.features] == ["user:ctr", "user:clicks", "user:duration", "request:hour"]
    assert m.features[2].default == 2.5
    assert m.metadata == {"auc": 0.9}
    assert main(["models", "verify", str(archive)]) == 0
    out = capsys.readouterr().out
    assert "ctr v4 (onnx" in out
    assert "health check: passed" in out
    assert "signature: none" in out
    assert main(["models", "verify", str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 4


def test_cli_verify_failure_is_a_clean_error(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "model.onnx").write_bytes(b"broken")
    assert main(["models", "verify", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("edge-runtime: error: ")
    assert "model file has 6 bytes" in err
    assert main(["models", "package", str(bundle / "model.onnx"), "--out", "x", "--name", "n", "--version", "1",
                 "--metadata", "[1]"]) == 2  # fmt: skip
    assert "--metadata: must be a JSON object" in capsys.readouterr().err


def test_non_finite_metadata_is_a_bundle_error(bundle: Path) -> None:
    data = json.loads((bundle / "manifest.json").read_text())
    data["metadata"] = {"score": float("inf")}
    with pytest.raises(BundleError, match=r"m\.json: metadata: must hold plain JSON values"):
        Manifest.from_dict(data, path="m.json")
