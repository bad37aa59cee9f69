"""Fleet simulation: many devices against a real broker, with faults you inject.

:class:`Fleet` starts N simulated devices (each its own data directory, ``EdgeRuntime`` and sync agent) behind
a per-device fault-injecting proxy, a mosquitto (or a broker you started) and the real cloud publisher; it can cut
and restore one device's connectivity, restart the broker, kill -9 a device process and restart it, skew a
device's clock, publish features and models, and wait until the fleet converged. The ``fleet`` pytest fixture
(:mod:`cloud_sync.fleet.pytest_plugin`) and ``cloud-sync simulate`` build on it. See docs/fleet.md.

Names are loaded on first use, so ``cloud-sync --help`` does not pay for asyncio and the simulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud_sync._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._clock import SkewedClock
    from ._converge import Convergence, Timeline
    from ._device import DeviceSpec, RemoteDevice, SimDevice, ThreadDevice
    from ._errors import ConditionTimeout, FleetError
    from ._fleet import Fleet
    from ._models import build_model
    from ._observe import SIM_VIEW
    from ._proxy import DeviceProxy, ProxyHub, Upstream
    from ._scenarios import SCENARIOS, ScenarioResult, run_scenario
    from ._truth import RowDiff, Truth
    from ._wait import wait_until

_LAZY = {
    "SIM_VIEW": "._observe",
    "SCENARIOS": "._scenarios",
    "ConditionTimeout": "._errors",
    "Convergence": "._converge",
    "DeviceProxy": "._proxy",
    "DeviceSpec": "._device",
    "Fleet": "._fleet",
    "FleetError": "._errors",
    "ProxyHub": "._proxy",
    "RemoteDevice": "._device",
    "RowDiff": "._truth",
    "ScenarioResult": "._scenarios",
    "SimDevice": "._device",
    "SkewedClock": "._clock",
    "ThreadDevice": "._device",
    "Timeline": "._converge",
    "Truth": "._truth",
    "Upstream": "._proxy",
    "build_model": "._models",
    "run_scenario": "._scenarios",
    "wait_until": "._wait",
}

# A literal list, so type checkers and readers see the API; tests/test_public_api.py pins it.
__all__ = [
    "SCENARIOS",
    "SIM_VIEW",
    "ConditionTimeout",
    "Convergence",
    "DeviceProxy",
    "DeviceSpec",
    "Fleet",
    "FleetError",
    "ProxyHub",
    "RemoteDevice",
    "RowDiff",
    "ScenarioResult",
    "SimDevice",
    "SkewedClock",
    "ThreadDevice",
    "Timeline",
    "Truth",
    "Upstream",
    "build_model",
    "run_scenario",
    "wait_until",
]


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY)
