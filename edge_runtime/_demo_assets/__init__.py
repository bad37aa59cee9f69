"""Data the `edge-runtime demo` needs, shipped in the package: the int8 ctr bundle and its feature definitions.

Copies of models/ctr-onnx-int8 and models/definitions.toml (tests/edge_runtime/cli/test_cli_demo.py keeps them equal).
"""
