"""Small real models for the backend tests and benchmarks, built on the fly so no tensorflow is needed.

Every model is the same kind of network: a multi-layer perceptron with ReLU hidden layers and fixed random
weights, so a plain numpy forward pass is the reference its outputs must match. ONNX models are written with
``onnx.helper`` (and quantized with ``onnxruntime.quantization``); TFLite models are written as flatbuffers with the
schema module that ships inside ``ai_edge_litert`` — the same format the TensorFlow converter emits, fully
integer-quantized variants included.

conftest.py turns these into fixtures; ``benchmarks/test_bench_backends.py`` imports this module too.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np

#: Layer widths of the small model (the DESIGN.md floor model) and of the larger (~2 MB fp32) benchmark model.
SMALL_LAYERS = (8, 64, 64, 1)
LARGE_LAYERS = (32, 512, 512, 512, 4)

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclasses.dataclass(frozen=True)
class MLP:
    """Weights of a ReLU perceptron; ``weights[i]`` has shape (fan_in, fan_out)."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @property
    def n_inputs(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.weights[-1].shape[1])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The float64 reference forward pass, returned as float32."""
        h = np.asarray(x, dtype=np.float64)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.astype(np.float64) + b.astype(np.float64)
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h.astype(np.float32)

    def activations(self, x: np.ndarray) -> list[np.ndarray]:
        """Input, every hidden activation and the output, for choosing quantization ranges."""
        out = [np.asarray(x, dtype=np.float64)]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = out[-1] @ w + b
            out.append(np.maximum(h, 0.0) if i < len(self.weights) - 1 else h)
        return out


def make_mlp(layers: tuple[int, ...], seed: int = 7) -> MLP:
    """He-initialised weights with small random biases, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(layers):
        weights.append((rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32))
        biases.append((rng.standard_normal(fan_out) * 0.1).astype(np.float32))
    return MLP(tuple(weights), tuple(biases))


def sample_inputs(mlp: MLP, rows: int, seed: int = 1) -> np.ndarray:
    """Standard-normal float32 rows for ``mlp``."""
    return np.random.default_rng(seed).standard_normal((rows, mlp.n_inputs)).astype(np.float32)


# --- ONNX ---------------------------------------------------------------------------------------------------


def write_onnx(mlp: MLP, path: Path, *, input_name: str = "x", output_name: str = "y") -> Path:
    """Write ``mlp`` as an ONNX model with a dynamic batch dimension named ``batch``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    current = input_name
    last = len(mlp.weights) - 1
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        added = output_name if i == last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [added]))
        if i != last:
            nodes.append(helper.make_node("Relu", [added], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", mlp.n_inputs])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", mlp.n_outputs])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edge-runtime-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_onnx_int8(fp32_path: Path, path: Path) -> Path:
    """Dynamic int8 quantization of an fp32 ONNX model (weights int8, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8)
    return path


def write_onnx_two_inputs(path: Path) -> Path:
    """A model with a float32 input ``dense`` (batch, 3) and an int64 input ``ids`` (batch, 2).

    Output ``score`` (batch, 1) = dense @ [1, 2, 3] + sum(ids) — simple enough to check by hand.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f", "axes"], ["ids_sum"], keepdims=1),
        helper.make_node("MatMul", ["dense", "w"], ["dense_mm"]),
        helper.make_node("Add", ["dense_mm", "ids_sum"], ["score"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([[1.0], [2.0], [3.0]], dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- TFLite -------------------------------------------------------------------------------------------------

_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _activation_qparams(lo: float, hi: float, dtype: str) -> tuple[float, int]:
    """Asymmetric (scale, zero point) covering [lo, hi] (widened to contain 0), as the TF converter chooses."""
    qmin, qmax = _QRANGE[dtype]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin) or 1.0
    zero_point = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return float(scale), zero_point


def write_tflite(mlp: MLP, path: Path, *, quantize: str | None = None, name: str = "x") -> Path:
    """Write ``mlp`` as a TFLite flatbuffer of FULLY_CONNECTED ops with fused ReLU and a dynamic batch.

    ``quantize`` is None for float32, or ``"int8"`` / ``"uint8"`` for a fully integer-quantized model whose input
    and output tensors are themselves quantized (what the converter emits with ``inference_input_type=int8``).
    Quantization ranges come from the activations on 2,000 standard-normal calibration rows.
    """
    from ai_edge_litert import schema_py_generated as fb
    from flatbuffers import Builder

    tensors: list[Any] = []
    buffers: list[Any] = [fb.BufferT()]  # buffer 0 is the empty sentinel the format requires

    def add_tensor(
        tname: str,
        shape: list[int],
        ttype: int,
        data: np.ndarray | None = None,
        qparams: tuple[float, int] | None = None,
        signature: list[int] | None = None,
    ) -> int:
        t = fb.TensorT()
        t.name = tname
        t.shape = np.array(shape, dtype=np.int32)
        if signature is not None:
            t.shapeSignature = np.array(signature, dtype=np.int32)
        t.type = ttype
        t.buffer = 0
        if data is not None:
            buf = fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(buf)
            t.buffer = len(buffers) - 1
        if qparams is not None:
            q = fb.QuantizationParametersT()
            q.scale = [qparams[0]]
            q.zeroPoint = [qparams[1]]
            t.quantization = q
        tensors.append(t)
        return len(tensors) - 1

    n_layers = len(mlp.weights)
    if quantize is None:
        act_type = fb.TensorType.FLOAT32
        act_q: list[tuple[float, int] | None] = [None] * (n_layers + 1)
    else:
        act_type = fb.TensorType.INT8 if quantize == "int8" else fb.TensorType.UINT8
        calib = mlp.activations(sample_inputs(mlp, 2000, seed=99))
        act_q = [_activation_qparams(float(a.min()), float(a.max()), quantize) for a in calib]

    current = add_tensor(name, [1, mlp.n_inputs], act_type, qparams=act_q[0], signature=[-1, mlp.n_inputs])
    graph_input = current
    operators = []
    for i, (w, b) in enumerate(zip(mlp.weights, mlp.biases, strict=True)):
        fan_out = int(w.shape[1])
        w_t = np.ascontiguousarray(w.T)  # TFLite stores FC weights as (out, in)
        if quantize is None:
            w_idx = add_tensor(f"w{i}", list(w_t.shape), fb.TensorType.FLOAT32, w_t.astype(np.float32))
            b_idx = add_tensor(f"b{i}", [fan_out], fb.TensorType.FLOAT32, b.astype(np.float32))
        else:
            in_scale = act_q[i][0]  # type: ignore[index]
            w_scale = float(np.abs(w_t).max()) / 127.0
            w_zp = 0 if quantize == "int8" else 128
            w_q = np.round(w_t / w_scale).astype(np.int32) + w_zp
            w_dtype = np.int8 if quantize == "int8" else np.uint8
            w_idx = add_tensor(f"w{i}", list(w_t.shape), act_type, w_q.astype(w_dtype), (w_scale, w_zp))
            b_scale = in_scale * w_scale
            b_q = np.round(b / b_scale).astype(np.int32)
            b_idx = add_tensor(f"b{i}", [fan_out], fb.TensorType.INT32, b_q, (b_scale, 0))
        last = i == n_layers - 1
        out_name = "y" if last else f"h{i}"
        out_idx = add_tensor(out_name, [1, fan_out], act_type, qparams=act_q[i + 1], signature=[-1, fan_out])
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = fb.ActivationFunctionType.NONE if last else fb.ActivationFunctionType.RELU
        op = fb.OperatorT()
        op.opcodeIndex = 0
        op.inputs = np.array([current, w_idx, b_idx], dtype=np.int32)
        op.outputs = np.array([out_idx], dtype=np.int32)
        op.builtinOptionsType = fb.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = opts
        operators.append(op)
        current = out_idx

    code = fb.OperatorCodeT()
    code.builtinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = fb.BuiltinOperator.FULLY_CONNECTED
    code.version = 1 if quantize is None else 4
    subgraph = fb.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = np.array([graph_input], dtype=np.int32)
    subgraph.outputs = np.array([current], dtype=np.int32)
    subgraph.operators = operators
    subgraph.name = "main"
    model = fb.ModelT()
    model.version = 3
    model.operatorCodes = [code]
    model.subgraphs = [subgraph]
    model.buffers = buffers
    model.description = "edge-runtime test MLP"
    builder = Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def committed_models(suffix: str) -> list[Path]:
    """Model files with ``suffix`` committed under the repository's ``models/`` directory."""
    root = REPO_ROOT / "models"
    if not root.is_dir():
        return []
    # build/ holds build.py's intermediate files (git-ignored), not committed models
    return sorted(p for p in root.rglob(f"*{suffix}") if "build" not in p.relative_to(root).parts[:-1])


# --- the set of test models ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuiltModel:
    """A model file, the network it encodes, and how closely its outputs follow the float reference."""

    key: str
    path: Path
    fmt: str
    mlp: MLP
    atol: float
    quantized: str | None = None
    #: How far a row's output may move with the rest of its batch: dynamic quantization picks activation ranges
    #: per batch, so there it is a quantization step, elsewhere float noise.
    batch_atol: float = 1e-5


def build_all(root: Path) -> dict[str, BuiltModel]:
    small, large = make_mlp(SMALL_LAYERS), make_mlp(LARGE_LAYERS, seed=11)
    onnx_fp32 = write_onnx(small, root / "small.onnx")
    # Tolerances: fp32 within float rounding; int8 within a few percent of the output's range.
    return {
        "onnx-small": BuiltModel("onnx-small", onnx_fp32, "onnx", small, 1e-4),
        "onnx-small-int8": BuiltModel(
            "onnx-small-int8",
            write_onnx_int8(onnx_fp32, root / "small-int8.onnx"),
            "onnx",
            small,
            0.15,
            batch_atol=0.05,
        ),
        "onnx-large": BuiltModel("onnx-large", write_onnx(large, root / "large.onnx"), "onnx", large, 1e-3),
        "tflite-small": BuiltModel("tflite-small", write_tflite(small, root / "small.tflite"), "tflite", small, 1e-4),
        "tflite-small-int8": BuiltModel(
            "tflite-small-int8",
            write_tflite(small, root / "small-int8.tflite", quantize="int8"),
            "tflite",
            small,
            0.15,
            "int8",
        ),
        "tflite-small-uint8": BuiltModel(
            "tflite-small-uint8",
            write_tflite(small, root / "small-uint8.tflite", quantize="uint8"),
            "tflite",
            small,
            0.15,
            "uint8",
        ),
        "tflite-large": BuiltModel("tflite-large", write_tflite(large, root / "large.tflite"), "tflite", large, 1e-3),
    }
