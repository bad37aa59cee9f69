"""quantize_onnx and `edge-runtime models quantize` on real small ONNX models, quantised by real onnxruntime."""

from __future__ import annotations

import itertools
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime._errors import EdgeRuntimeError, ModelInputError, QuantizationError
from edge_runtime.cli import main as cli_main
from edge_runtime.models._quantize import QuantizeReport, load_npz, quantize_onnx, roc_auc

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

N_IN = 8


def _write_mlp(path: Path, seed: int = 3, hidden: int = 64) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    """An 8 -> hidden -> hidden -> 1 sigmoid MLP (input ``features``, output ``probability``)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [N_IN, hidden, hidden, 1]
    layers = [
        (
            (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
            (rng.standard_normal(b) * 0.1).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]
    nodes, inits, current = [], [], "features"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        current = f"a{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [current], ["probability"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path, layers


def _forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return 1 / (1 + np.exp(-h))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    return _write_mlp(tmp_path_factory.mktemp("quantize") / "mlp.onnx")


@pytest.fixture(scope="module")
def data(model: tuple[Path, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Calibration rows, and held-out rows labelled from the model's own scores plus noise (AUC well above 0.5)."""
    rng = np.random.default_rng(11)
    calib = rng.standard_normal((256, N_IN)).astype(np.float32)
    held = rng.standard_normal((500, N_IN)).astype(np.float32)
    p = _forward(model[1], held).ravel()
    labels = (rng.random(500) < p).astype(np.int8)
    return {"calibration": calib, "features": held, "labels": labels}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"features": x})[0]


def test_dynamic_quantization_writes_a_smaller_model_that_agrees(model, data, tmp_path: Path) -> None:
    src, layers = model
    out = tmp_path / "int8.onnx"
    report = quantize_onnx(src, out, mode="dynamic", eval_data={"features": data["features"], "labels": data["labels"]})

    assert isinstance(report, QuantizeReport)
    assert report.mode == "dynamic"
    assert report.output_bytes == out.stat().st_size
    assert report.input_bytes == src.stat().st_size
    assert report.size_ratio == pytest.approx(report.output_bytes / report.input_bytes)
    assert report.size_ratio < 0.6  # int8 weights: about a quarter of the float weights plus graph overhead
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert report.input_latency_us > 0
    assert report.output_latency_us > 0
    assert report.latency_ratio == pytest.approx(report.output_latency_us / report.input_latency_us)
    assert report.batch_latency_ratio > 0
    assert report.eval_source == "eval"
    assert report.eval_rows == 500

    quantized = _run(out, data["features"])
    reference = _forward(layers, data["features"])
    measured = np.abs(_run(src, data["features"]) - quantized).max()
    assert report.max_abs_diff == pytest.approx(measured, abs=1e-7)
    assert 0 < report.max_abs_diff < 0.05
    assert np.abs(quantized - reference).max() < 0.05
    assert report.auc_before == pytest.approx(roc_auc(data["labels"], _run(src, data["features"])))
    assert report.auc_after == pytest.approx(roc_auc(data["labels"], quantized))
    assert report.auc_delta == pytest.approx(report.auc_after - report.auc_before)
    assert abs(report.auc_delta) < 0.02
    # Not the 0600 of a temp file: the model is readable like any file the user writes.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.glob("*.part"))


def test_static_quantization_from_npz_files(model, data, tmp_path: Path) -> None:
    src, _ = model
    calib = tmp_path / "calib.npz"
    held = tmp_path / "held.npz"
    np.savez(calib, features=data["calibration"])
    np.savez(held, features=data["features"], labels=data["labels"])
    out = tmp_path / "static.onnx"
    report = quantize_onnx(src, out, mode="static", calibration=calib, eval_data=held)

    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert "QuantizeLinear" in ops
    assert "DequantizeLinear" in ops
    assert report.mode == "static"
    assert report.eval_source == "eval"
    assert report.max_abs_diff == pytest.approx(np.abs(_run(src, data["features"]) - _run(out, data["features"])).max())
    assert report.max_abs_diff < 0.1
    assert report.auc_after is not None
    assert abs(report.auc_delta) < 0.03


def test_single_input_model_accepts_any_array_name_and_float64(model, data, tmp_path: Path) -> None:
    src, _ = model
    calib = tmp_path / "calib.npz"
    np.savez(calib, arr_0=data["calibration"].astype(np.float64))
    report = quantize_onnx(src, tmp_path / "s.onnx", mode="static", calibration=calib)
    assert report.eval_source == "calibration"
    assert report.eval_rows == 256
    assert report.auc_before is None
    assert report.auc_delta is None


def test_without_data_the_difference_is_measured_on_random_rows(model, tmp_path: Path) -> None:
    report = quantize_onnx(model[0], tmp_path / "d.onnx")
    assert report.eval_source == "random"
    assert report.eval_rows > 0
    assert report.max_abs_diff > 0
    assert report.auc_before is None


def test_static_without_calibration_is_refused_and_writes_nothing(model, tmp_path: Path) -> None:
    out = tmp_path / "s.onnx"
    with pytest.raises(QuantizationError, match="calibration"):
        quantize_onnx(model[0], out, mode="static")
    assert not out.exists()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="no such model file") as exc:
        quantize_onnx(tmp_path / "nope.onnx", tmp_path / "out.onnx")
    assert exc.value.path == str(tmp_path / "nope.onnx")


def test_file_that_is_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(QuantizationError, match="cannot load"):
        quantize_onnx(bad, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_mode_same_path_and_missing_directory(model, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="unknown mode"):
        quantize_onnx(model[0], tmp_path / "o.onnx", mode="fp16")  # type: ignore[arg-type]
    with pytest.raises(QuantizationError, match="must differ"):
        quantize_onnx(model[0], model[0])
    with pytest.raises(QuantizationError, match="output directory"):
        quantize_onnx(model[0], tmp_path / "missing" / "o.onnx")


@pytest.mark.parametrize(
    ("calibration", "match"),
    [
        (np.zeros((10, 7), np.float32), r"shape \[10, 7\]; expected \[N, 8\]"),
        (np.zeros((10, 8, 1), np.float32), r"shape \[10, 8, 1\]"),
        (np.zeros((10, 8), np.int64), "dtype int64; expected float32"),
        (np.zeros((0, 8), np.float32), "no rows"),
        ({"x": np.zeros((4, 8), np.float32), "z": np.zeros((4, 8), np.float32)}, "no array for model input 'features'"),
    ],
)
def test_calibration_that_does_not_fit_the_model(model, tmp_path: Path, calibration, match: str) -> None:
    out = tmp_path / "s.onnx"
    with pytest.raises(ModelInputError, match=match) as exc:
        quantize_onnx(model[0], out, mode="static", calibration=calibration)
    assert not out.exists()
    if "no rows" not in match:
        assert exc.value.input_name == "features"


def test_bad_labels_in_eval_data(model, data, tmp_path: Path) -> None:
    with pytest.raises(ModelInputError, match="3 labels for 500 rows"):
        quantize_onnx(model[0], tmp_path / "o.onnx", eval_data={"features": data["features"], "labels": [0, 1, 1]})
    with pytest.raises(ModelInputError, match="0 or 1"):
        quantize_onnx(
            model[0], tmp_path / "o.onnx", eval_data={"features": data["features"], "labels": np.full(500, 2)}
        )


def test_unreadable_npz(model, tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(QuantizationError, match="npz"):
        quantize_onnx(model[0], tmp_path / "o.onnx", mode="static", calibration=junk)
    with pytest.raises(QuantizationError, match="no such data file"):
        load_npz(tmp_path / "absent.npz")


def test_missing_onnx_package_names_the_extra(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(QuantizationError, match=r"pip install 'edge-runtime\[quantize\]'"):
        quantize_onnx(model[0], tmp_path / "o.onnx")


def test_errors_are_edge_runtime_errors() -> None:
    assert issubclass(QuantizationError, EdgeRuntimeError)
    assert issubclass(ModelInputError, EdgeRuntimeError)


# --- roc_auc ---------------------------------------------------------------------------------------------------


def _auc_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_roc_auc_known_values() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="length"):
        roc_auc(np.array([0, 1]), np.array([0.1]))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 6)),  # few distinct scores, so ties are common
        min_size=2,
        max_size=40,
    ).filter(lambda rows: len({r[0] for r in rows}) == 2)
)
def test_roc_auc_matches_pairwise_definition(rows: list[tuple[int, int]]) -> None:
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows], dtype=np.float64) / 6
    assert roc_auc(labels, scores) == pytest.approx(_auc_pairs(labels, scores))


# --- CLI -------------------------------------------------------------------------------------------------------


def test_cli_prints_a_table(model, data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    held = tmp_path / "held.npz"
    np.savez(held, features=data["features"], labels=data["labels"])
    out = tmp_path / "q.onnx"
    assert cli_main(["models", "quantize", str(model[0]), str(out), "--eval", str(held)]) == 0
    text = capsys.readouterr().out
    for needle in ("size (bytes)", "latency, 1 row (us)", "max |output diff|", "ROC AUC", "dynamic int8"):
        assert needle in text
    assert out.is_file()


def test_cli_json_static(model, data, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, features=data["calibration"])
    out = tmp_path / "q.onnx"
    argv = ["models", "quantize", str(model[0]), str(out), "--mode", "static", "--calibration", str(calib), "--json"]
    assert cli_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "static"
    assert report["output_bytes"] == out.stat().st_size
    assert report["eval_source"] == "calibration"


def test_cli_errors_are_clean(model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli_main(["models", "quantize", str(model[0]), str(tmp_path / "q.onnx"), "--mode", "static"])
    assert status == QuantizationError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("edge-runtime: error:")
    assert "calibration" in err
    assert cli_main(["models", "quantize", str(tmp_path / "none.onnx"), str(tmp_path / "q.onnx")]) != 0
    assert "no such model file" in capsys.readouterr().err


def test_public_api() -> None:
    import edge_runtime
    import edge_runtime.models

    assert edge_runtime.models.quantize_onnx is quantize_onnx
    assert edge_runtime.quantize_onnx is quantize_onnx
    assert edge_runtime.QuantizationError is QuantizationError
    assert "QuantizeReport" in edge_runtime.models.__all__
