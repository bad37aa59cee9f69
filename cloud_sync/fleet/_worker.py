"""A worker process hosting simulated devices: ``python -m cloud_sync.fleet._worker``.

One JSON request per stdin line, one JSON reply per stdout line (``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``). Requests: ``ping``; ``start`` (``spec``: a DeviceSpec as JSON); ``stop``
(``device``); ``call`` (``device``, ``method``, ``args``) runs a DeviceCore query; ``probe_all`` answers
``{device: probe}`` for every device here; ``profile_start`` (``interval``) / ``profile_stop`` run the sampling
profiler of :mod:`._sampler` over every thread and answer its counts. EOF on stdin closes every device cleanly
and exits.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

_METHODS = frozenset(
    {
        "probe",
        "rows",
        "status",
        "skew",
        "connected",
        "model_versions",
        "watermarks",
        "predict_tensors",
        "check_integrity",
    }
)


_SAMPLER: list[Any] = []  # the running sampling profiler, if any


def main() -> int:
    """Serve requests until stdin closes."""
    logging.basicConfig(level=os.environ.get("FLEET_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    import cloud_sync.agent  # noqa: F401

    from ._device import DeviceCore, DeviceSpec  # noqa: F401  (import cost paid before the first "ping" answer)

    devices: dict[str, Any] = {}
    out = sys.stdout
    try:
        for line in sys.stdin:
            out.write(json.dumps(_answer(devices, line), default=str) + "\n")
            out.flush()
    finally:
        for core in devices.values():
            try:
                core.close()
            except Exception:
                logging.exception("closing a device failed")
    return 0


def _answer(devices: dict[str, Any], line: str) -> dict[str, Any]:
    from ._device import DeviceCore, DeviceSpec

    try:
        request = json.loads(line)
        op = request["op"]
        if op == "ping":
            return {"ok": True, "result": os.getpid()}
        if op == "start":
            spec = DeviceSpec.from_json(request["spec"])
            if spec.device_id in devices:
                return {"ok": False, "error": f"device {spec.device_id!r} runs here already"}
            devices[spec.device_id] = DeviceCore(spec)
            return {"ok": True, "result": None}
        if op == "profile_start":
            from ._sampler import Sampler

            if _SAMPLER:
                _SAMPLER.pop().stop()
            _SAMPLER.append(Sampler(float(request.get("interval", 0.002))).start())
            return {"ok": True, "result": None}
        if op == "profile_stop":
            if not _SAMPLER:
                return {"ok": False, "error": "no profile running (send profile_start first)"}
            sampler = _SAMPLER.pop()
            sampler.stop()
            return {"ok": True, "result": {"samples": sampler.samples, "counts": dict(sampler.counts)}}
        if op == "probe_all":
            return {"ok": True, "result": {d: _probe(core) for d, core in devices.items()}}
        if op not in ("stop", "call"):
            return {"ok": False, "error": f"unknown op {op!r}; known: ping, start, stop, call, probe_all"}
        device = request.get("device")
        if device not in devices:
            return {"ok": False, "error": f"no device {device!r} in this worker"}
        if op == "stop":
            devices.pop(device).close()
            return {"ok": True, "result": None}
        if op == "call":
            method = request["method"]
            if method not in _METHODS:
                return {"ok": False, "error": f"unknown method {method!r}; known: {', '.join(sorted(_METHODS))}"}
            return {"ok": True, "result": getattr(devices[device], method)(*request.get("args", []))}
        return {"ok": False, "error": f"unknown op {op!r}"}
    except Exception as exc:  # one bad request must not take the other devices down
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _probe(core: Any) -> dict[str, Any]:
    try:
        return {**core.probe(), "running": True}
    except Exception as exc:
        return {"running": True, "connected": False, "models": {}, "watermarks": {}, "error": str(exc)}


if __name__ == "__main__":
    sys.exit(main())
