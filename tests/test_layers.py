"""Imports go one way: cloud_sync uses edge_runtime; edge_runtime never imports cloud_sync.

Checked twice: statically over every module of edge_runtime (a lazy import inside a function counts too), and in a
fresh interpreter, where importing edge_runtime and serving a prediction must load no cloud_sync module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_no_edge_runtime_module_imports_cloud_sync() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "edge_runtime").rglob("*.py"))
        for line, name in _imported_modules(path)
        if name == "cloud_sync" or name.startswith("cloud_sync.")
    ]
    assert offenders == []


def test_a_fresh_interpreter_serving_a_prediction_loads_no_cloud_sync_module(tmp_path: Path) -> None:
    script = f"""
import sys
from pathlib import Path
from edge_runtime import EdgeRuntime, RuntimeConfig
root = Path({str(ROOT)!r})
with EdgeRuntime(RuntimeConfig(data_dir={str(tmp_path)!r}, definitions=root / "models" / "definitions.toml")) as rt:
    rt.models.install(root / "models" / "ctr-onnx-int8", activate=True)
    rt.predict("ctr", entity_rows=[{{"user_id": 1}}])
print(sorted(m for m in sys.modules if m == "cloud_sync" or m.startswith("cloud_sync.")))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "[]"


def test_the_sync_component_is_registered_by_entry_point_not_by_import() -> None:
    from cloud_sync.agent import DeviceAgent
    from edge_runtime.serving._components import component_factory

    assert component_factory("sync") == DeviceAgent.for_runtime
