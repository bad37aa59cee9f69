"""``Fleet``: N simulated devices, a broker, the real cloud publisher, and the faults between them."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._device import DeviceSpec, RemoteDevice, SimDevice, ThreadDevice
from ._errors import FleetError
from ._host import DEVICES_PER_PROCESS, WorkerProcess
from ._models import build_model
from ._observe import SIM_VIEW, Observing, quietly
from ._proxy import ProxyHub
from ._truth import Truth

SIM_DEFINITIONS = f"""# Written by cloud_sync.fleet: the feature view simulated devices sync.
[[entity]]
name = "entity"
join_keys = ["entity_id"]

[[feature_view]]
name = "{SIM_VIEW}"
entities = ["entity"]
schema = [{{ name = "value", dtype = "float64" }}, {{ name = "count", dtype = "int64" }}]
"""
HOSTING = ("auto", "threads", "processes")


class Fleet(Observing):
    """Simulated devices against a real broker, fed by the real :class:`~cloud_sync.publisher.CloudPublisher`.

    ``Fleet(50)`` starts a mosquitto (``broker_options`` are :class:`~cloud_sync.broker.BrokerConfig` fields) with
    a user per device, a publisher, and 50 devices ``dev-0000`` … each with its own data directory, runtime and
    agent, connected through its own fault proxy. ``broker=`` uses a :class:`~cloud_sync.broker.Mosquitto` you
    started (its users must include the devices: ``BrokerConfig(devices=...)``), or the path of the JSON
    credentials file of a running broker (``cloud-sync broker --credentials-file``: any URL).

    ``hosting``: ``"threads"`` (in this process; at most ~60 devices, because paho cannot watch descriptors
    >= 1024), ``"processes"`` (shards of ``per_process`` devices per worker process) or ``"auto"`` (threads up to
    ``per_process`` devices). Devices in ``killable`` (ids or indices) run alone in a worker process so
    :meth:`kill` can SIGKILL them. ``definitions`` (a TOML file) replaces the default feature view
    :data:`SIM_VIEW`. Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        devices: int = 0,
        *,
        root: str | Path | None = None,
        broker: Any = None,
        broker_options: Mapping[str, Any] | None = None,
        publisher_options: Mapping[str, Any] | None = None,
        definitions: str | Path | None = None,
        killable: Iterable[int | str] = (),
        hosting: str = "auto",
        per_process: int = DEVICES_PER_PROCESS,
        id_format: str = "dev-{:04d}",
        keepalive_s: int = 10,
        reconnect: tuple[float, float] = (0.2, 2.0),
    ) -> None:
        if hosting not in HOSTING:
            raise FleetError(f"hosting must be one of {', '.join(HOSTING)}, got {hosting!r}")
        if devices < 0 or per_process < 1:
            raise FleetError(f"need devices >= 0 and per_process >= 1, got {devices} and {per_process}")
        self._owns_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="fleet-")).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ids = [id_format.format(i) for i in range(devices)]
        self._killable = {self.ids[k] if isinstance(k, int) else k for k in killable}
        unknown = self._killable - set(self.ids)
        if unknown:
            raise FleetError(f"killable devices {sorted(unknown)} are not in the fleet ({id_format} x {devices})")
        self.hosting = hosting
        self.per_process = per_process
        self.keepalive_s = keepalive_s
        self.reconnect = reconnect
        self._broker_options = dict(broker_options or {})
        self._publisher_options = dict(publisher_options or {})
        self._own_broker = broker is None
        if isinstance(broker, (str, Path)):
            from ._external import ExternalBroker

            broker = ExternalBroker(broker)
        self.broker: Any = broker
        self.publisher: Any = None
        self.proxies: ProxyHub | None = None
        self.devices: dict[str, SimDevice] = {}
        self._workers: list[WorkerProcess] = []
        self.truth = Truth()
        #: model name → version every device should run (fleet-wide releases made through :meth:`release`)
        self.model_targets: dict[str, int] = {}
        self.definitions = Path(definitions) if definitions else self.root / "definitions.toml"
        self.keys: Any = None
        self._started = False

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> Fleet:
        """Start the broker (unless given), the publisher, the proxies and every device; returns when all run."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        from cloud_sync.broker import Mosquitto
        from cloud_sync.publisher import CloudConfig, CloudPublisher
        from edge_runtime.models import generate_keypair

        if not self.definitions.exists():
            self.definitions.write_text(SIM_DEFINITIONS)
        self.keys = generate_keypair(self.root / "keys")
        if self._own_broker:
            opts = {"max_queued_messages": 10_000, **self._broker_options}
            opts["devices"] = tuple(opts.get("devices", ())) + tuple(self.ids)
            self.broker = Mosquitto(directory=self.root / "broker", **opts).start()
        creds = self.broker.write_credentials_file(self.root / "credentials.json")
        config = CloudConfig.from_credentials(
            creds,
            db_path=self.root / "cloud" / "cloud.db",
            client_id=f"fleet-cloud-{uuid.uuid4().hex[:8]}",
            signing_key=self.keys.private_key,
            **self._publisher_options,
        )
        (self.root / "cloud").mkdir(exist_ok=True)
        self.publisher = CloudPublisher(config).start()
        self.proxies = ProxyHub()
        specs = [self._spec(d) for d in self.ids]
        self._place_and_start(specs)

    def _spec(self, device_id: str) -> DeviceSpec:
        assert self.proxies is not None
        proxy = self.proxies.add(device_id, self.broker.url)
        lo, hi = self.reconnect
        return DeviceSpec(
            device_id=device_id,
            data_dir=self.root / "devices" / device_id,
            broker_url=proxy.url.replace("mqtt://", "mqtts://") if self.broker.url.startswith("mqtts") else proxy.url,
            username=device_id,
            password=self.broker.password(device_id),
            ca_file=self.broker.ca_file,
            definitions=self.definitions,
            trusted_keys=(self.keys.public_key,),
            topic_prefix=self.broker.config.prefix,
            keepalive_s=self.keepalive_s,
            reconnect_min_s=lo,
            reconnect_max_s=hi,
        )

    def _place_and_start(self, specs: list[DeviceSpec]) -> None:
        killable = [s for s in specs if s.device_id in self._killable]
        rest = [s for s in specs if s.device_id not in self._killable]
        threads = self.hosting == "threads" or (self.hosting == "auto" and len(rest) <= self.per_process)
        groups: list[list[SimDevice]] = []
        for spec in killable:
            worker = self._worker(spec.device_id)
            groups.append([RemoteDevice(spec, worker, killable=True)])
        if threads:
            groups.append([ThreadDevice(s) for s in rest])
        else:
            for i in range(0, len(rest), self.per_process):
                worker = self._worker(f"shard{len(self._workers)}")
                groups.append([RemoteDevice(s, worker) for s in rest[i : i + self.per_process]])
        for group in groups:
            for dev in group:
                self.devices[dev.device_id] = dev

        def start_group(group: list[SimDevice]) -> None:
            for dev in group:
                dev.start()

        with ThreadPoolExecutor(max(1, min(len(groups), 8))) as pool:
            for future in [pool.submit(start_group, g) for g in groups]:
                future.result()

    def _worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(name, self.root / "logs" / f"{name}.log")
        self._workers.append(worker)
        return worker

    def add_device(self, device_id: str | None = None, *, killable: bool = False) -> SimDevice:
        """Create one more device (a broker user too) and start it; returns it."""
        device_id = device_id or f"dev-extra-{len(self.devices):04d}"
        if device_id in self.devices:
            raise FleetError(f"device {device_id!r} exists already")
        if self._own_broker or device_id not in self.broker.credentials:
            self.broker.add_device(device_id)
        self.ids.append(device_id)
        spec = self._spec(device_id)
        dev: SimDevice = RemoteDevice(spec, self._worker(device_id), killable=True) if killable else ThreadDevice(spec)
        self.devices[device_id] = dev
        dev.start()
        return dev

    def close(self) -> None:
        """Stop every device, the publisher, the proxies and the broker (if started here); remove a temp root."""
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(quietly(lambda d: d.stop()), list(self.devices.values())))
        for worker in self._workers:
            quietly(lambda w: w.stop())(worker)
        if self.publisher is not None:
            quietly(lambda p: p.stop())(self.publisher)
        if self.proxies is not None:
            self.proxies.close()
        if self._own_broker and self.broker is not None:
            self.broker.close()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- devices and faults -----------------------------------------------------------------------------------

    def device(self, which: int | str) -> SimDevice:
        """A device by index or id."""
        if isinstance(which, int):
            try:
                which = self.ids[which]
            except IndexError:
                raise FleetError(f"no device #{which}; the fleet has {len(self.ids)}") from None
        try:
            return self.devices[which]
        except KeyError:
            raise FleetError(f"no device {which!r}; e.g. {', '.join(self.ids[:3])}") from None

    def _ids(self, which: int | str | Iterable[int | str]) -> list[str]:
        items = [which] if isinstance(which, (int, str)) else list(which)
        return [self.device(w).device_id for w in items]

    def cut(self, which: int | str | Iterable[int | str], mode: str = "reset") -> None:
        """Cut the connectivity of one or more devices (see :meth:`ProxyHub.cut` for the modes)."""
        assert self.proxies is not None
        for d in self._ids(which):
            self.proxies.cut(d, mode)

    def restore(self, which: int | str | Iterable[int | str] | None = None) -> None:
        """Restore connectivity of the given devices (default: every cut device)."""
        assert self.proxies is not None
        ids = self._ids(which) if which is not None else [d for d, p in self.proxies.proxies.items() if p.is_cut]
        for d in ids:
            self.proxies.restore(d)

    def is_cut(self, which: int | str) -> bool:
        """Whether the device's connectivity is cut."""
        assert self.proxies is not None
        return self.proxies.get(self.device(which).device_id).is_cut

    def set_latency(self, which: int | str | Iterable[int | str], seconds: float) -> None:
        """Add ``seconds`` of latency each way to the devices' links."""
        assert self.proxies is not None
        for d in self._ids(which):
            self.proxies.set_latency(d, seconds)

    def restart_broker(self, down_s: float = 0.0) -> None:
        """Stop the broker, wait ``down_s`` seconds, start it again (same port, persistence and users); returns
        once the publisher reconnected (devices reconnect by themselves, with their backoff)."""
        if not hasattr(self.broker, "restart"):
            raise FleetError("the broker is external (a credentials file); restart it yourself")
        self.broker.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.broker.start()
        # Publishing fails while the publisher is still reconnecting: return once it is back.
        self.publisher.connection.wait_connected(30.0)

    def kill(self, which: int | str) -> None:
        """SIGKILL a killable device's process (mid-write, mid-install: whatever it was doing)."""
        self.device(which).kill()

    def stop_device(self, which: int | str) -> None:
        """Stop a device cleanly (it says offline)."""
        self.device(which).stop()

    def start_device(self, which: int | str) -> None:
        """Start a stopped or killed device again from its data directory."""
        self.device(which).start()

    restart_device = start_device

    def skew_clock(self, which: int | str | Iterable[int | str], seconds: float) -> None:
        """Set the clock offset of devices (runtime TTLs and the agent's expiry checks see it)."""
        for d in self._ids(which):
            self.devices[d].skew(seconds)

    # --- the cloud side ---------------------------------------------------------------------------------------

    def publish_features(
        self,
        rows: list[dict[str, Any]],
        *,
        view: str = SIM_VIEW,
        join_keys: Iterable[str] = ("entity_id",),
        route: str | None = "device_id",
        kind: str = "delta",
        tombstones: list[dict[str, Any]] | None = None,
        **options: Any,
    ) -> Any:
        """Publish rows (a list of dicts) through the real publisher and record them as the truth.

        ``route`` names the column holding each row's device; None publishes to the whole fleet (broadcast).
        ``options`` go to :meth:`CloudPublisher.publish_features`.
        """
        keys = tuple(join_keys)
        result = self.publisher.publish_features(
            view,
            rows,
            join_keys=keys,
            kind=kind,
            route=route,
            broadcast=route is None,
            tombstones=tombstones if tombstones else None,
            **options,
        )
        self.truth.record(view, rows, join_keys=keys, kind=kind, route=route, tombstones=tombstones or ())
        return result

    def build_model(self, version: int, *, name: str = "sim", broken: bool = False) -> Path:
        """A signed bundle of the demo model as ``name`` v``version`` (``broken``: fails its health check)."""
        assert self.keys is not None
        return build_model(
            self.root / "bundles", name=name, version=version, signing_key=self.keys.private_key, broken=broken
        )

    def release(self, bundle: str | Path, **options: Any) -> Any:
        """Release a bundle through the publisher (``options``: devices, canary_percent, failure_threshold, ...).

        A release to the whole fleet becomes a convergence target (:attr:`model_targets`).
        """
        result = self.publisher.release(bundle, **options)
        if not options.get("devices") and options.get("canary_percent") is None:
            manifest = json.loads((Path(bundle) / "manifest.json").read_text())
            self.model_targets[manifest["name"]] = int(manifest["version"])
        return result
