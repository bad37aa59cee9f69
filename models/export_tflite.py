"""Convert MLP weights to TFLite fp32 and full-integer int8. Run by ``build.py`` under an interpreter with tensorflow.

Kept apart from ``build.py`` so tensorflow can live in its own virtualenv (``build.py --tf-python``): it is needed
only to build models, never at runtime or in tests.

Usage: ``python export_tflite.py WEIGHTS.npz CALIBRATION.npz OUT_FP32.tflite OUT_INT8.tflite``
where WEIGHTS.npz holds ``W0, b0, W1, b1, ...`` (ReLU between layers, sigmoid at the end) and CALIBRATION.npz a
``features`` array of representative (standardised) input rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN reorders float sums; off, so the converter's calibration run is the same on every machine.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import tensorflow as tf


def _layers(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as data:
        count = sum(1 for key in data.files if key.startswith("W"))
        return [(data[f"W{i}"].astype(np.float32), data[f"b{i}"].astype(np.float32)) for i in range(count)]


class _Mlp(tf.Module):
    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]) -> None:
        super().__init__()
        self._layers = [(tf.constant(w), tf.constant(b)) for w, b in layers]
        width = layers[0][0].shape[0]
        self.serve = tf.function(
            self._forward, input_signature=[tf.TensorSpec([None, width], tf.float32, name="features")]
        )

    def _forward(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        h = features
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = tf.matmul(h, w) + b
            if i < last:
                h = tf.nn.relu(h)
        return {"probability": tf.sigmoid(h)}


def _convert(module: _Mlp, calibration: np.ndarray | None) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if calibration is not None:
        rows = calibration.astype(np.float32)

        def representative():  # type: ignore[no-untyped-def]
            for i in range(rows.shape[0]):
                yield [rows[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # int8 input and output tensors: the runtime's quantize/dequantize path is what gets exercised.
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _name_io_tensors(path: str) -> None:
    """Rename the input and output tensors after their signature names (``features``, ``probability``), so an
    engine that lists tensors and one that lists signatures report the same names."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    subgraph = model.subgraphs[0]
    for signature in model.signatureDefs:
        for entry in [*signature.inputs, *signature.outputs]:
            subgraph.tensors[entry.tensorIndex].name = entry.name
    flatbuffer_utils.write_model(model, path)


def main(argv: list[str]) -> int:
    """Entry point; see the module docstring for the arguments."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    weights, calibration, out_fp32, out_int8 = argv
    tf.random.set_seed(0)
    module = _Mlp(_layers(weights))
    with np.load(calibration) as data:
        rows = data["features"]
    Path(out_fp32).write_bytes(_convert(module, None))
    Path(out_int8).write_bytes(_convert(module, rows))
    for path in (out_fp32, out_int8):
        _name_io_tensors(path)
    print(f"tensorflow {tf.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
