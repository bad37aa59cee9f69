"""The observing half of :class:`~cloud_sync.fleet.Fleet`: probes, convergence, waits, rows, profiles."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._converge import Convergence, Timeline, device_behind, track
from ._device import RemoteDevice, SimDevice
from ._errors import FleetError
from ._host import WorkerProcess
from ._truth import RowDiff, Truth
from ._wait import wait_until

#: The feature view every simulated device defines (entity_id int64 → value float64, count int64).
SIM_VIEW = "sim_features"


class Observing:
    """Methods of :class:`~cloud_sync.fleet.Fleet` that look at the devices and the cloud (mixed into it)."""

    ids: list[str]
    devices: dict[str, SimDevice]
    model_targets: dict[str, int]
    publisher: Any
    truth: Truth
    _workers: list[WorkerProcess]

    def is_cut(self, which: int | str) -> bool:  # implemented by Fleet
        raise NotImplementedError

    def _ids(self, which: int | str | Iterable[int | str]) -> list[str]:  # implemented by Fleet
        raise NotImplementedError

    def probe(self) -> dict[str, dict[str, Any]]:
        """``{device: {"running", "connected", "models", "watermarks"}}`` for every device, asked in parallel."""
        out: dict[str, dict[str, Any]] = {}
        by_worker: dict[int, WorkerProcess] = {}
        for d, dev in self.devices.items():
            if isinstance(dev, RemoteDevice) and not dev.killable and dev.worker.running:
                by_worker[id(dev.worker)] = dev.worker
            else:
                out[d] = quietly(lambda x: x.probe(), {"running": False})(dev)
        with ThreadPoolExecutor(max(1, min(len(by_worker), 8))) as pool:
            for answer in pool.map(quietly(lambda w: w.request({"op": "probe_all"}), {}), by_worker.values()):
                out.update(answer)
        for d, dev in self.devices.items():
            out.setdefault(d, {"running": dev.running, "connected": False, "models": {}, "watermarks": {}})
        return out

    def convergence(
        self, *, models: Mapping[str, int] | None = None, streams: bool = True, include_offline: bool = False
    ) -> Convergence:
        """How many devices hold ``models`` (default :attr:`model_targets`) and, with ``streams``, the cloud's
        head of every stream they get. Cut or stopped devices are not counted unless ``include_offline``."""
        want_models = dict(self.model_targets if models is None else models)
        want_streams: dict[str, dict[str, tuple[int, int]]] = {}
        if streams:
            want_streams = {s.device: dict(s.streams_desired) for s in self.publisher.fleet_status()}
        probes = self.probe()
        behind: dict[str, str] = {}
        skipped = []
        counted = 0
        for d in self.ids:
            dev = self.devices[d]
            offline = not dev.running or self.is_cut(d)
            if offline and not include_offline:
                skipped.append(d)
                continue
            counted += 1
            ws = want_streams.get(d) if streams else {}
            why = device_behind(probes[d], want_models, ws)
            if why:
                behind[d] = why
        return Convergence(counted, counted - len(behind), behind, tuple(skipped))

    def wait_converged(
        self,
        timeout: float = 30.0,
        *,
        models: Mapping[str, int] | None = None,
        streams: bool = True,
        include_offline: bool = False,
        interval: float = 0.2,
        on_sample: Callable[[Convergence, float], None] | None = None,
        since: float | None = None,
    ) -> Timeline:
        """Wait until :meth:`convergence` is complete; returns the timeline (when 50 %, 99 %, all converged,
        counted from ``since``, a ``time.monotonic()`` value, default now). ConditionTimeout after ``timeout``
        says which devices are behind and why."""
        return track(
            lambda: self.convergence(models=models, streams=streams, include_offline=include_offline),
            timeout,
            interval=interval,
            on_sample=on_sample,
            since=since,
        )

    def every_device(
        self, check: Callable[[dict[str, Any]], bool], *, include_offline: bool = False
    ) -> Callable[[], tuple[bool, str]]:
        """A condition for :meth:`wait_until`: ``check(probe)`` holds on every device (online ones by default).

        ``f.wait_until(f.every_device(lambda p: p["models"].get("ctr") == 3 and p["watermarks"].get("s") ==
        [1, 7]))``; on timeout the message shows the probes of the devices where it does not hold.
        """

        def condition() -> tuple[bool, str]:
            probes = self.probe()
            bad = {
                d: p
                for d, p in probes.items()
                if (include_offline or (p.get("running") and not self.is_cut(d))) and not check(p)
            }
            shown = "\n".join(f"  {d}: {p}" for d, p in list(bad.items())[:8])
            return not bad, f"{len(bad)} devices do not satisfy it:\n{shown}"

        return condition

    def wait_until(self, condition: Callable[[], Any], timeout: float = 30.0, **options: Any) -> float:
        """:func:`~cloud_sync.fleet.wait_until` (poll, then fail with what was last seen)."""
        return wait_until(condition, timeout, **options)

    @contextlib.contextmanager
    def sample_profile(self, interval: float = 0.002) -> Iterator[Counter[str]]:
        """Sample every thread of every worker process while the ``with`` block runs; the yielded Counter is
        filled on exit with busy samples per ``dir/file:function`` (C time is charged to its Python caller).
        Devices hosted as threads in this process are not sampled: profile those with ``hosting="processes"``."""
        counts: Counter[str] = Counter()
        workers = [w for w in self._workers if w.running]
        for w in workers:
            w.request({"op": "profile_start", "interval": interval})
        try:
            yield counts
        finally:
            for w in workers:
                with contextlib.suppress(FleetError):
                    counts.update(w.request({"op": "profile_stop"})["counts"])

    def check_rows(self, view: str = SIM_VIEW, devices: Iterable[int | str] | None = None) -> list[RowDiff]:
        """Compare each running device's rows of ``view`` with the truth; returns the devices that differ."""
        ids = self._ids(devices) if devices is not None else [d for d in self.ids if self.devices[d].running]

        def one(d: str) -> RowDiff:
            return self.truth.compare(view, d, self.devices[d].rows(view))

        with ThreadPoolExecutor(4) as pool:
            return [diff for diff in pool.map(one, ids) if not diff.ok]


def quietly(fn: Callable[[Any], Any], default: Any = None) -> Callable[[Any], Any]:
    """``fn`` that returns ``default`` instead of raising (teardown and probing must reach every device)."""

    def run(x: Any) -> Any:
        try:
            return fn(x)
        except Exception:
            return default

    return run
