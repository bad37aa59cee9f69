"""Simulated devices: each one a data directory, an ``EdgeRuntime`` and its sync agent.

A :class:`ThreadDevice` runs in the simulator's own process (its agent's two threads beside everyone else's): it
costs a few MB and starts in milliseconds, so it is the default. A :class:`ProcessDevice` runs the very same code
in a worker process of its own (``python -m cloud_sync.fleet._worker``) and answers queries over a line-JSON pipe:
it costs a Python interpreter (tens of MB) but can be killed with SIGKILL mid-write, which a thread cannot.
docs/fleet.md has the measurements behind this split.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime import RuntimeSettings

from ._clock import SkewedClock
from ._errors import FleetError


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """Everything needed to (re)start one simulated device; JSON-able so a worker process can get it."""

    device_id: str
    data_dir: Path
    broker_url: str
    username: str
    password: str = field(repr=False)
    ca_file: Path | None = None
    definitions: Path | None = None
    trusted_keys: tuple[Path, ...] = ()
    variant_preference: tuple[str, ...] = RuntimeSettings().variant_preference
    topic_prefix: str = "edge"
    keepalive_s: int = 10
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 2.0
    clock_offset_s: float = 0.0

    def runtime_config(self) -> Any:
        """The device's :class:`~edge_runtime.RuntimeConfig` (sync on, credentials given directly)."""
        from edge_runtime import RuntimeConfig, SyncSettings
        from edge_runtime._config import RuntimeSettings

        return RuntimeConfig(
            profile=f"fleet-{self.device_id}",
            data_dir=self.data_dir,
            definitions=self.definitions,
            runtime=RuntimeSettings(variant_preference=self.variant_preference),
            sync=SyncSettings(
                broker_url=self.broker_url,
                device_id=self.device_id,
                topic_prefix=self.topic_prefix,
                keepalive_s=self.keepalive_s,
                reconnect_min_s=self.reconnect_min_s,
                reconnect_max_s=self.reconnect_max_s,
                trusted_keys=self.trusted_keys,
            ),
        )

    def to_json(self) -> str:
        """The spec as one JSON line (paths as strings)."""
        d = asdict(self)
        d["data_dir"] = str(self.data_dir)
        d["ca_file"] = str(self.ca_file) if self.ca_file else None
        d["definitions"] = str(self.definitions) if self.definitions else None
        d["trusted_keys"] = [str(k) for k in self.trusted_keys]
        d["variant_preference"] = list(self.variant_preference)
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> DeviceSpec:
        """The inverse of :meth:`to_json`."""
        d = json.loads(text)
        d["data_dir"] = Path(d["data_dir"])
        d["ca_file"] = Path(d["ca_file"]) if d["ca_file"] else None
        d["definitions"] = Path(d["definitions"]) if d["definitions"] else None
        d["trusted_keys"] = tuple(Path(k) for k in d["trusted_keys"])
        d["variant_preference"] = tuple(d["variant_preference"])
        return cls(**d)


class DeviceCore:
    """One running device in this process: the runtime, its agent and its clock. Every query the simulator asks
    of a device is a method here, so a worker process answers them with the same code."""

    def __init__(self, spec: DeviceSpec) -> None:
        from cloud_sync.agent import Credentials, DeviceAgent
        from edge_runtime import EdgeRuntime

        self.spec = spec
        self.clock = SkewedClock(spec.clock_offset_s)
        self.runtime = EdgeRuntime(spec.runtime_config(), clock=self.clock, start_sync=False)
        try:
            # The skewed clock, explicitly: manifest expiry and download windows see the same wrong time as the
            # feature TTLs.
            self.agent = DeviceAgent.for_runtime(
                self.runtime,
                wall_clock=self.clock,
                credentials=Credentials(spec.username, spec.password, spec.ca_file),
            )
            self.runtime.attach("sync", self.agent, start=True)  # runtime.status() and close() cover it
        except BaseException:
            self.runtime.close()
            raise

    def close(self) -> None:
        """Stop the agent (publishing ``offline``) and close the stores."""
        self.runtime.close()

    # --- queries (JSON-able answers) --------------------------------------------------------------------------

    def connected(self) -> bool:
        """Whether the agent's broker connection is up."""
        return bool(self.agent.link.connected)

    def model_versions(self) -> dict[str, int]:
        """Active version of every installed model."""
        out = {}
        for name in self.runtime.models.names():
            v = self.runtime.models.active_version(name)
            if v is not None:
                out[name] = v
        return out

    def watermarks(self) -> dict[str, list[int]]:
        """``{stream: [epoch, applied_seq]}`` of every synced stream."""
        return {s: [e, a] for s, (e, a) in self.agent.features.watermarks().items()}

    def probe(self) -> dict[str, Any]:
        """What convergence checks need in one call: connection, models, watermarks."""
        return {"connected": self.connected(), "models": self.model_versions(), "watermarks": self.watermarks()}

    def rows(self, view: str) -> list[dict[str, Any]]:
        """Every row stored in feature view ``view``: join keys and features (no event times)."""
        store = self.runtime.features
        entities = store.list_entities(view)
        if not entities:
            return []
        fv = store.get_view(view)
        names = [f"{view}:{f.name}" for f in fv.schema]
        out: list[dict[str, Any]] = []
        for start in range(0, len(entities), 2000):
            part = entities[start : start + 2000]
            cols = store.get_online_features(names, part).to_dict()
            keys = list(cols)
            for i in range(len(part)):
                out.append({k: _plain(cols[k][i]) for k in keys})
        return out

    def status(self) -> dict[str, Any]:
        """The runtime's full status (JSON-able)."""
        return self.runtime.status()

    def check_integrity(self) -> dict[str, Any]:
        """SQLite ``integrity_check`` of every database in the data directory, and the model store's check of
        every active model's files; a device killed mid-write must pass both after a restart."""
        import sqlite3

        dbs = {}
        for path in sorted(self.spec.data_dir.rglob("*.db")):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                dbs[str(path.relative_to(self.spec.data_dir))] = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
        return {"databases": dbs, "models": self.runtime.models.verify_active()}

    def skew(self, seconds: float) -> None:
        """Set this device's clock offset."""
        self.clock.skew(seconds)

    def predict_tensors(self, model: str, inputs: dict[str, list[Any]]) -> list[Any]:
        """Run ``model`` on tensors (a health probe during rollouts); returns the first output as lists."""
        import numpy as np

        result = self.runtime.predict(model, inputs={k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})
        return next(np.asarray(v).tolist() for v in result.outputs.values())


def _plain(value: Any) -> Any:
    """numpy scalars → Python values, so rows compare and serialise alike in threads and processes."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


class SimDevice:
    """A simulated device, wherever it runs. Subclasses: :class:`ThreadDevice`, :class:`ProcessDevice`."""

    kind = "?"

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.clock_offset_s = spec.clock_offset_s
        self.restarts = 0

    @property
    def device_id(self) -> str:
        """The device id (also its broker username)."""
        return self.spec.device_id

    @property
    def data_dir(self) -> Path:
        """The device's data directory."""
        return self.spec.data_dir

    def call(self, method: str, *args: Any) -> Any:
        """Run a :class:`DeviceCore` query on the device."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the device process/runtime is up."""
        raise NotImplementedError

    def start(self) -> None:
        """Start (or restart) the device from its data directory."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop cleanly: the agent says ``offline`` and the stores close."""
        raise NotImplementedError

    def kill(self) -> None:
        """Kill the device abruptly (SIGKILL); only devices started killable (alone in a process) can."""
        raise FleetError(
            f"device {self.device_id!r} runs in a thread, which cannot be killed; "
            "make it killable: Fleet(..., killable=[...]) or fleet.add_device(..., killable=True)"
        )

    def skew(self, seconds: float) -> None:
        """Set the device's clock offset (kept across restarts)."""
        self.clock_offset_s = float(seconds)
        if self.running:
            self.call("skew", float(seconds))

    def probe(self) -> dict[str, Any]:
        """``{"connected", "models", "watermarks"}``; a stopped device reports ``{"running": False}``."""
        if not self.running:
            return {"running": False, "connected": False, "models": {}, "watermarks": {}}
        out: dict[str, Any] = self.call("probe")
        out["running"] = True
        return out

    def rows(self, view: str) -> list[dict[str, Any]]:
        """Every row of ``view`` on the device."""
        return list(self.call("rows", view))

    def status(self) -> dict[str, Any]:
        """The device runtime's status."""
        return dict(self.call("status"))

    def _spec_now(self) -> DeviceSpec:
        from dataclasses import replace

        return replace(self.spec, clock_offset_s=self.clock_offset_s)


class ThreadDevice(SimDevice):
    """A device in the simulator's process (cheap and fast to start; at most ~40 per process, see docs)."""

    kind = "thread"

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.core: DeviceCore | None = None

    @property
    def running(self) -> bool:
        return self.core is not None

    def start(self) -> None:
        if self.core is None:
            self.core = DeviceCore(self._spec_now())

    def stop(self) -> None:
        core, self.core = self.core, None
        if core is not None:
            core.close()

    def call(self, method: str, *args: Any) -> Any:
        if self.core is None:
            raise FleetError(f"device {self.device_id!r} is not running")
        return getattr(self.core, method)(*args)

    @property
    def runtime(self) -> Any:
        """The device's :class:`~edge_runtime.EdgeRuntime` (thread devices only)."""
        if self.core is None:
            raise FleetError(f"device {self.device_id!r} is not running")
        return self.core.runtime


class RemoteDevice(SimDevice):
    """A device hosted by a :class:`~cloud_sync.fleet._host.WorkerProcess` (alone in it when ``killable``)."""

    kind = "process"

    def __init__(self, spec: DeviceSpec, worker: Any, *, killable: bool = False) -> None:
        super().__init__(spec)
        self.worker = worker
        self.killable = killable
        self._running = False

    @property
    def pid(self) -> int | None:
        """The hosting worker's process id (None when it is not running)."""
        return self.worker.pid if self.worker.running else None

    @property
    def running(self) -> bool:
        return self._running and self.worker.running

    def start(self) -> None:
        if self.running:
            return
        if not self.worker.running:
            self.worker.start()
        self.worker.request({"op": "start", "spec": self._spec_now().to_json()})
        self._running = True

    def stop(self) -> None:
        if self.running:
            self.worker.request({"op": "stop", "device": self.device_id})
        self._running = False
        if self.killable:
            self.worker.stop()

    def call(self, method: str, *args: Any) -> Any:
        if not self.running:
            raise FleetError(f"device {self.device_id!r} is not running")
        return self.worker.request({"op": "call", "device": self.device_id, "method": method, "args": list(args)})

    def kill(self) -> None:
        """SIGKILL the device's worker process: no cleanup, no offline status (the broker sends the last will)."""
        if not self.killable:
            super().kill()
        if not self.running:
            raise FleetError(f"device {self.device_id!r} is not running")
        self.worker.kill()
        self._running = False
