"""Model bundles for simulations: the demo's tiny ONNX model re-versioned, signed with the fleet's key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ._errors import FleetError


def demo_bundle_dir() -> Path:
    """The bundle shipped with edge_runtime for the demo (an 8 KB int8 ONNX click-through model)."""
    from edge_runtime import _demo_assets

    path = Path(_demo_assets.__file__).parent / "ctr-onnx-int8"
    if not (path / "manifest.json").is_file():
        raise FleetError(f"the demo model bundle is missing from {path}; reinstall edge-runtime")
    return path


def build_model(
    out_dir: Path,
    *,
    name: str,
    version: int,
    signing_key: Any,
    broken: bool = False,
    variant: str = "onnx-int8",
) -> Path:
    """A signed bundle ``out_dir/<name>-v<version>`` of the demo model under a new name and version.

    It reads no features (predict with tensors). ``broken=True`` makes its health check expect outputs the model
    does not produce, so every device refuses to activate it and reports a failed install — for canary tests.
    """
    from edge_runtime.models import sign_bundle

    if version < 1:
        raise FleetError(f"a model version must be >= 1, got {version}")
    src = demo_bundle_dir()
    target = Path(out_dir) / f"{name}-v{version}{'-broken' if broken else ''}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    manifest = json.loads((src / "manifest.json").read_text())
    shutil.copyfile(src / manifest["model_file"], target / manifest["model_file"])
    manifest.update(name=name, version=version, features=[])
    manifest["metadata"] = {"variant": variant, "simulated": True}
    if broken:
        expected = manifest["health_check"]["expected"]
        manifest["health_check"]["expected"] = {
            k: [[x + 0.5 for x in row] for row in rows] for k, rows in expected.items()
        }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sign_bundle(target, signing_key)
    return target
