"""Real tiny ONNX models and bundles for the bundle, signing and store tests.

Each model is a 4 -> 8 -> 1 perceptron with a sigmoid whose weights come from a seed, so two versions of a model
give clearly different outputs and ``expected_output`` (numpy) is the reference every run must match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

N_IN = 4
HIDDEN = 8
FEATURES = ["user:click_through_rate", "user:number_of_clicks", "user:average_page_duration", "request:hour"]


def weights(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic weights for ``seed``."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((N_IN, HIDDEN)).astype(np.float32)
    b1 = rng.standard_normal(HIDDEN).astype(np.float32) * 0.1
    w2 = rng.standard_normal((HIDDEN, 1)).astype(np.float32)
    b2 = rng.standard_normal(1).astype(np.float32) * 0.1
    return w1, b1, w2, b2


def write_mlp(path: Path, seed: int) -> Path:
    """Write the seed's perceptron as ONNX (input ``x`` [batch, 4] float32, output ``y`` [batch, 1])."""
    return save_perceptron(path, *weights(seed))


def save_perceptron(path: Path, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> Path:
    """Save ``sigmoid(relu(x @ w1 + b1) @ w2 + b2)`` as ONNX with a dynamic batch (``x`` → ``y``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Sigmoid", ["o1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def expected_output(seed: int, x: np.ndarray) -> np.ndarray:
    """The numpy reference output of the seed's perceptron."""
    w1, b1, w2, b2 = weights(seed)
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
    return (1.0 / (1.0 + np.exp(-(h @ w2 + b2)))).astype(np.float32)


def sample_inputs(rows: int = 3, seed: int = 99) -> np.ndarray:
    """Fixed sample rows."""
    return np.random.default_rng(seed).standard_normal((rows, N_IN)).astype(np.float32)


def make_bundle(
    root: Path,
    *,
    name: str = "ctr",
    version: int = 1,
    seed: int | None = None,
    signing_key: Any = None,
    archive: bool = False,
    **kwargs: Any,
) -> Path:
    """Package the perceptron for ``seed`` (default: ``version``) as bundle ``root/<name>-v<version>``."""
    from edge_runtime.models import package_bundle

    seed = version if seed is None else seed
    model = write_mlp(root / "src" / f"{name}-{version}-{seed}.onnx", seed)
    kwargs.setdefault("features", FEATURES)
    kwargs.setdefault("health_check", {"inputs": sample_inputs(), "atol": 1e-5})
    return package_bundle(
        model,
        root / f"{name}-v{version}",
        name=name,
        version=version,
        signing_key=signing_key,
        archive=archive,
        **kwargs,
    )
