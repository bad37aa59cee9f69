"""`edge-runtime models quantize`."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add the `quantize` command to the `models` group's subparsers."""
    p = sub.add_parser(
        "quantize",
        help="quantise an ONNX model to int8 and report size, latency and accuracy change",
        description=(
            "Quantise an ONNX model to int8 with onnxruntime.quantization, then print the size ratio, the latency "
            "ratio (1 row and a batch, measured here, int8/fp32) and the accuracy change on held-out data. "
            "Data files are .npz archives with one array per model input (a single-input model accepts any "
            "array name) and optional 0/1 'labels' for the AUC. Needs onnx: pip install 'edge-runtime[quantize]'."
        ),
    )
    p.add_argument("input", type=Path, help="the float ONNX model to quantise")
    p.add_argument("output", type=Path, help="where to write the quantised ONNX model")
    p.add_argument(
        "--mode",
        choices=("dynamic", "static"),
        default="dynamic",
        help="dynamic: int8 weights, activations quantised per call (default); static: QDQ with calibrated ranges",
    )
    p.add_argument("--calibration", type=Path, help=".npz of representative input rows (required for --mode static)")
    p.add_argument("--eval", dest="eval_data", type=Path, help=".npz of held-out rows, optionally with 'labels'")
    p.add_argument("--per-channel", action="store_true", help="quantise weights per output channel")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from edge_runtime.models._quantize import quantize_onnx

    from ._output import print_json, print_table

    report = quantize_onnx(
        args.input,
        args.output,
        mode=args.mode,
        calibration=args.calibration,
        eval_data=args.eval_data,
        per_channel=args.per_channel,
    )
    if args.json:
        print_json(report.as_dict())
    else:
        print(f"{report.input_path} -> {report.output_path} ({report.mode} int8)")
        print_table(report.table_rows(), ["metric", "original", "quantised", "change"])
    return 0
