"""Build the example click-through models, quantise them, measure them, and package them as model bundles.

    python models/build.py                                  # everything (TFLite needs tensorflow)
    python models/build.py --tf-python /tmp/tfvenv/bin/python   # tensorflow in another virtualenv
    python models/build.py --skip-tflite                    # ONNX only, no tensorflow needed

Synthetic users are drawn from fixed distributions and labelled by a known logistic rule plus noise (see
``true_logit``), an MLP is trained on them in numpy (seeded, so the weights are the same on every run), exported
to ONNX with ``onnx.helper`` and to TFLite by ``export_tflite.py``, quantised to int8, evaluated on held-out users,
and packaged with :func:`edge_runtime.models.package_bundle`. Everything lands beside this file: one bundle
directory per variant, ``data/heldout.npz`` and ``data/calibration.npz``, ``metrics.json``, and the AUC table in
``README.md`` (between the ``metrics`` markers). Intermediate files go to ``build/``, removed at the end unless
``--keep-build``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ctr_data import FEATURES, NAMES, draw_users, label, mlp_forward, train_mlp, true_logit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing

SEED = 20261121
N_TRAIN = 40_000
N_HELDOUT = 4_000
N_CALIBRATION = 512
N_HEALTH = 4
OPSET = 13
IR_VERSION = 8  # readable by every onnxruntime the package supports (>= 1.17)


def export_onnx(layers: list[tuple[np.ndarray, np.ndarray]], path: Path, *, doc: str) -> None:
    """Write the MLP as ONNX: input ``features`` float32 [N, 8], output ``probability`` float32 [N, 1].

    MatMul + Add rather than Gemm, because onnxruntime's dynamic quantisation turns MatMul into MatMulInteger.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    inits = []
    current = "features"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"dense{i}/kernel"), numpy_helper.from_array(b, f"dense{i}/bias")]
        nodes.append(helper.make_node("MatMul", [current, f"dense{i}/kernel"], [f"dense{i}/matmul"]))
        nodes.append(helper.make_node("Add", [f"dense{i}/matmul", f"dense{i}/bias"], [f"dense{i}/out"]))
        current = f"dense{i}/out"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"dense{i}/relu"]))
            current = f"dense{i}/relu"
    nodes.append(helper.make_node("Sigmoid", [current], ["probability"]))
    graph = helper.make_graph(
        nodes,
        "ctr_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", layers[0][0].shape[0]])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-runtime models/build.py",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def _require_tensorflow(tf_python: str) -> None:
    """Fail before training, not after, when the TFLite step cannot run."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is None)"
    try:
        found = subprocess.run([tf_python, "-c", probe], check=False).returncode == 0
    except OSError:
        found = False
    if not found:
        raise SystemExit(
            f"tensorflow is not importable by {tf_python}: install it (pip install -e '.[build-models]'), "
            "point --tf-python at an interpreter that has it, or pass --skip-tflite"
        )


def export_tflite(
    tf_python: str, weights: list[tuple[np.ndarray, np.ndarray]], calibration: np.ndarray, out_dir: Path, stem: str
) -> tuple[Path, Path]:
    """Run ``export_tflite.py`` under ``tf_python``; return the fp32 and int8 file paths."""
    weights_path = out_dir / f"{stem}-weights.npz"
    arrays: dict[str, Any] = {}
    for i, (w, b) in enumerate(weights):
        arrays[f"W{i}"], arrays[f"b{i}"] = w, b
    np.savez(weights_path, **arrays)
    calib_path = out_dir / f"{stem}-calibration.npz"
    np.savez(calib_path, features=calibration.astype(np.float32))
    fp32, int8 = out_dir / f"{stem}-fp32.tflite", out_dir / f"{stem}-int8.tflite"
    cmd = [tf_python, str(HERE / "export_tflite.py"), str(weights_path), str(calib_path), str(fp32), str(int8)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"TFLite export failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return fp32, int8


# --- evaluation ------------------------------------------------------------------------------------------------


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities from onnxruntime, one thread, CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["probability"], {"features": x.astype(np.float32)})[0]
    return out


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities from LiteRT, quantising int8 inputs and dequantising int8 outputs by scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], list(x.shape))
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    feed = x.astype(np.float32)
    if inp["dtype"] == np.int8:
        scale, zero = inp["quantization"]
        feed = np.clip(np.round(feed / scale) + zero, -128, 127).astype(np.int8)
    interp.set_tensor(inp["index"], feed)
    interp.invoke()
    result = interp.get_tensor(out["index"])
    if out["dtype"] == np.int8:
        scale, zero = out["quantization"]
        result = (result.astype(np.float32) - zero) * scale
    return np.asarray(result, dtype=np.float32)


def run_model(path: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities from the engine for ``path``'s format."""
    return run_tflite(path, x) if path.suffix == ".tflite" else run_onnx(path, x)


# --- the build ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One built model: bundle directory name, the model file, its format and quantisation, and an atol."""

    name: str
    path: Path
    family: str
    fmt: str
    scheme: str
    notes: str
    atol: float


def main(argv: list[str] | None = None) -> int:
    """Build everything; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tflite", action="store_true", help="build ONNX only (no tensorflow needed)")
    parser.add_argument("--skip-large", action="store_true", help="skip the large benchmark model")
    parser.add_argument("--tf-python", default=sys.executable, help="interpreter that has tensorflow")
    parser.add_argument("--out", type=Path, default=HERE, help="where bundles, data and metrics go")
    parser.add_argument("--keep-build", action="store_true", help="keep the intermediate files in build/")
    args = parser.parse_args(argv)
    if not args.skip_tflite:
        _require_tensorflow(args.tf_python)

    from edge_runtime.models._quantize import quantize_onnx, roc_auc

    started = time.monotonic()
    out: Path = args.out
    work = out / "build"
    work.mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)

    rng = np.random.default_rng(SEED)
    x_train = draw_users(rng, N_TRAIN)
    y_train = label(rng, x_train)
    x_held = draw_users(rng, N_HELDOUT)
    y_held = label(rng, x_held)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    z_train = ((x_train - mean) / std).astype(np.float32)
    z_held = ((x_held - mean) / std).astype(np.float32)
    calibration = z_train[rng.choice(N_TRAIN, N_CALIBRATION, replace=False)]
    np.savez_compressed(
        out / "data" / "heldout.npz",
        features=z_held,
        raw=x_held.astype(np.float32),
        labels=y_held,
        feature_names=np.array(NAMES),
    )
    np.savez_compressed(out / "data" / "calibration.npz", features=calibration)
    oracle_auc = roc_auc(y_held, true_logit(x_held))
    print(f"data: {N_TRAIN} train, {N_HELDOUT} held-out, positives {y_train.mean():.3f}, oracle AUC {oracle_auc:.4f}")

    families: dict[str, dict[str, Any]] = {
        "ctr": {"hidden": (64, 64), "epochs": 30, "lr": 3e-3, "rows": N_TRAIN},
    }
    if not args.skip_large:
        families["large"] = {"hidden": (1024, 1024), "epochs": 3, "lr": 5e-4, "rows": 20_000}

    variants: list[Variant] = []
    references: dict[str, np.ndarray] = {}
    quant_reports: dict[str, Any] = {}
    for family, spec in families.items():
        print(f"training {family}: 8 -> {' -> '.join(map(str, spec['hidden']))} -> 1")
        layers = train_mlp(
            z_train[: spec["rows"]],
            y_train[: spec["rows"]],
            spec["hidden"],
            epochs=spec["epochs"],
            lr=spec["lr"],
            seed=SEED,
        )
        references[family] = mlp_forward(layers, z_held)
        shape = " -> ".join(map(str, (8, *spec["hidden"], 1)))
        onnx_fp32 = work / f"{family}-fp32.onnx"
        export_onnx(layers, onnx_fp32, doc=f"click-through MLP {shape}, ReLU, sigmoid; inputs standardised")
        onnx_int8 = work / f"{family}-int8.onnx"
        report = quantize_onnx(onnx_fp32, onnx_int8, mode="dynamic", eval_data={"features": z_held, "labels": y_held})
        quant_reports[f"{family}-onnx-dynamic"] = _portable(report.as_dict())
        static = work / f"{family}-int8-static.onnx"
        report = quantize_onnx(
            onnx_fp32, static, mode="static", calibration=calibration, eval_data={"features": z_held, "labels": y_held}
        )
        quant_reports[f"{family}-onnx-static"] = _portable(report.as_dict())
        variants += [
            Variant(f"{family}-onnx-fp32", onnx_fp32, family, "onnx", "none", "float32 weights and activations", 1e-4),
            Variant(
                f"{family}-onnx-int8",
                onnx_int8,
                family,
                "onnx",
                "dynamic-int8",
                "onnxruntime quantize_dynamic: int8 weights (per tensor), activations quantised per call",
                2e-3,
            ),
        ]
        if not args.skip_tflite:
            tfl_fp32, tfl_int8 = export_tflite(args.tf_python, layers, calibration, work, family)
            variants += [
                Variant(f"{family}-tflite-fp32", tfl_fp32, family, "tflite", "none", "float32", 1e-4),
                Variant(
                    f"{family}-tflite-int8",
                    tfl_int8,
                    family,
                    "tflite",
                    "full-int8",
                    f"full-integer quantisation calibrated on {N_CALIBRATION} training rows; int8 input and output "
                    "tensors (the runtime quantises and dequantises with their scale and zero point)",
                    # two output quantisation steps (scale 1/256): kernels may round differently across CPUs
                    8e-3,
                ),
            ]

    health_idx = _health_rows(references["ctr"])
    metrics: dict[str, Any] = {
        "seed": SEED,
        "heldout_rows": N_HELDOUT,
        "heldout_positive_rate": float(y_held.mean()),
        "oracle_auc": oracle_auc,
        "features": [f.ref for f in FEATURES],
        "models": {},
        "onnx_quantize_reports": quant_reports,
    }
    for variant in variants:
        probs = run_model(variant.path, z_held).ravel()
        ref = references[variant.family].ravel()
        metrics["models"][variant.name] = {
            "format": variant.fmt,
            "quantization": variant.scheme,
            "model_file": f"{variant.name}/{_model_file(variant)}",
            "size": variant.path.stat().st_size,
            "auc": roc_auc(y_held, probs),
            "max_abs_diff_vs_float64_reference": float(np.abs(probs - ref).max()),
            "mean_abs_diff_vs_float64_reference": float(np.abs(probs - ref).mean()),
        }
        print(
            f"{variant.name:20s} {variant.path.stat().st_size:>9d} B  AUC {metrics['models'][variant.name]['auc']:.4f}"
        )
    for name, info in metrics["models"].items():
        fp32 = metrics["models"].get(name.replace("-int8", "-fp32"))
        info["auc_delta_vs_fp32"] = info["auc"] - fp32["auc"] if fp32 and "-int8" in name else None

    package(variants, out, z_held[health_idx], mean, std)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_readme_table(out / "README.md", metrics)
    if not args.keep_build:
        shutil.rmtree(work, ignore_errors=True)
    print(f"built {len(variants)} bundles in {time.monotonic() - started:.1f} s")
    return 0


def _portable(report: dict[str, Any]) -> dict[str, Any]:
    """A quantize report without the build machine's paths."""
    return {k: v for k, v in report.items() if k not in ("input_path", "output_path")}


def _health_rows(scores: np.ndarray) -> np.ndarray:
    """Indices of held-out rows spread over the score range (low to high), so a health check sees both ends."""
    order = np.argsort(scores.ravel(), kind="mergesort")
    picks = np.round(np.linspace(0.02, 0.98, N_HEALTH) * (len(order) - 1)).astype(np.intp)
    return order[picks]


def _model_file(variant: Variant) -> str:
    return f"model{variant.path.suffix}"


#: The model name every variant of a family is published under.
MODEL_NAMES = {"ctr": "ctr", "large": "ctr-large"}


def package(variants: list[Variant], out: Path, health_x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """Write one bundle directory per variant with :func:`edge_runtime.models.package_bundle`."""
    from edge_runtime.models import package_bundle

    features = [
        {"ref": f.ref, "default": f.default, "mean": float(m), "std": float(s)}
        for f, m, s in zip(FEATURES, mean, std, strict=True)
    ]
    for variant in variants:
        target = out / variant.name
        staged = out / "build" / "bundles" / variant.name
        shutil.rmtree(staged, ignore_errors=True)
        staged.parent.mkdir(parents=True, exist_ok=True)
        model_copy = out / "build" / "bundles" / f"{variant.name}{variant.path.suffix}"
        shutil.copyfile(variant.path, model_copy)
        expected = run_model(variant.path, health_x)
        package_bundle(
            model_copy,
            staged,
            # Every variant of a family is the same model: devices install the one their profile prefers
            # (runtime.variant_preference), and predict("ctr") serves it whichever it is.
            name=MODEL_NAMES[variant.family],
            version=1,
            # Declared rather than read from the engine: callers pass and receive float32 even when the TFLite
            # tensors are int8 (the backend quantises), and the batch dimension is dynamic in every format.
            inputs=[{"name": "features", "dtype": "float32", "shape": [None, len(FEATURES)]}],
            outputs=[{"name": "probability", "dtype": "float32", "shape": [None, 1]}],
            features=features,
            output_labels=None,
            quantization={"scheme": variant.scheme, "notes": variant.notes},
            health_check={
                "inputs": {"features": health_x.astype(np.float32).tolist()},
                "expected": {"probability": expected.astype(np.float64).tolist()},
                "atol": variant.atol,
            },
            metadata={
                "family": variant.family,
                "variant": variant.name.removeprefix(variant.family + "-"),
                "task": "click-through probability",
                "built_by": "models/build.py",
                "feature_descriptions": {f.ref: f.description for f in FEATURES},
            },
        )
        if _same_bundle(target, staged):
            continue  # keep the committed bundle (and its created_at), so a rebuild leaves git clean
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)


def _same_bundle(old: Path, new: Path) -> bool:
    """Whether two bundle directories hold the same model and manifest, ignoring ``created_at``."""
    from edge_runtime.models import Manifest

    try:
        before, after = Manifest.load(old / "manifest.json").to_dict(), Manifest.load(new / "manifest.json").to_dict()
    except Exception:  # no previous bundle, or one this version cannot read: replace it
        return False
    before.pop("created_at")
    after.pop("created_at")
    return before == after and sorted(p.name for p in old.iterdir()) == sorted(p.name for p in new.iterdir())


README_START = "<!-- metrics:start (written by build.py) -->"
README_END = "<!-- metrics:end -->"


def write_readme_table(readme: Path, metrics: dict[str, Any]) -> None:
    """Replace the table between the metrics markers in ``README.md`` (the rest of the file is hand-written)."""
    lines = [
        README_START,
        "",
        f"Held-out: {metrics['heldout_rows']} users, positive rate {metrics['heldout_positive_rate']:.3f}; "
        f"AUC of the true rule without noise (the ceiling): {metrics['oracle_auc']:.4f}.",
        "",
        "| bundle | format | quantisation | size (bytes) | AUC | AUC - fp32 | max abs diff vs float64 "
        "| mean abs diff vs float64 |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, info in metrics["models"].items():
        delta = "" if info["auc_delta_vs_fp32"] is None else f"{info['auc_delta_vs_fp32']:+.4f}"
        lines.append(
            f"| `{name}` | {info['format']} | {info['quantization']} | {info['size']:,} | {info['auc']:.4f} | "
            f"{delta} | {info['max_abs_diff_vs_float64_reference']:.2g} | "
            f"{info['mean_abs_diff_vs_float64_reference']:.2g} |"
        )
    lines += [
        "",
        "What `quantize_onnx` reported for the ONNX int8 models (dynamic is what ships; static QDQ, calibrated on",
        "`data/calibration.npz`, is shown for comparison and not shipped). Ratios are int8 / fp32 on this machine:",
        "",
        "| model | size ratio | latency ratio (1 row) | AUC | AUC - fp32 | max abs diff vs fp32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rep in metrics["onnx_quantize_reports"].items():
        lines.append(
            f"| {name} | {rep['size_ratio']:.3f} | {rep['latency_ratio']:.2f} | {rep['auc_after']:.4f} | "
            f"{rep['auc_delta']:+.4f} | "
            f"{rep['max_abs_diff']:.4f} |"
        )
    lines += ["", README_END]
    text = readme.read_text() if readme.exists() else f"# Example models\n\n{README_START}\n{README_END}\n"
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    readme.write_text(head + "\n".join(lines) + tail)


if __name__ == "__main__":
    raise SystemExit(main())
