"""Ready-made scenarios for ``cloud-sync simulate`` and the benchmarks: each drives a started :class:`Fleet`
and returns a :class:`ScenarioResult` with the convergence timeline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._converge import Convergence, Timeline
from ._errors import FleetError
from ._fleet import Fleet

T0 = 1_700_000_000.0
Progress = Callable[[Convergence, float], None]


@dataclass
class ScenarioResult:
    """What a scenario did and how the fleet converged afterwards."""

    name: str
    timeline: Timeline
    setup_s: float
    notes: dict[str, Any] = field(default_factory=dict)
    row_mismatches: int | None = None


def sim_rows(fleet: Fleet, total: int, *, ts: float, scale: float = 1.0, per_device: int = 0) -> list[dict[str, Any]]:
    """``total`` rows of the simulated view spread round-robin over the devices (entity ids unique per device)."""
    ids = fleet.ids
    out = []
    for i in range(total):
        d = i % len(ids)
        entity = d * 1_000_000 + per_device + i // len(ids)
        out.append(
            {"entity_id": entity, "value": entity * scale, "count": i, "event_timestamp": ts, "device_id": ids[d]}
        )
    return out


def _seed_fleet(f: Fleet) -> None:
    """Every device gets one row (its stream exists) and model v1, so the measured change is a pure update."""
    f.publish_features(sim_rows(f, len(f.ids), ts=T0), kind="snapshot")
    f.release(f.build_model(1))
    f.wait_converged(120)


def rollout(f: Fleet, *, rows: int, timeout: float, progress: Progress | None, rng: random.Random) -> ScenarioResult:
    """A new model version and a ``rows``-row feature delta to every device at once."""
    t = time.monotonic()
    _seed_fleet(f)
    setup = time.monotonic() - t
    bundle = f.build_model(2)
    start = time.monotonic()
    if rows:
        f.publish_features(sim_rows(f, rows, ts=T0 + 10, scale=2.0, per_device=10))
    f.release(bundle)
    timeline = f.wait_converged(timeout, on_sample=progress, interval=0.1, since=start)
    return ScenarioResult("rollout", timeline, setup, {"rows": rows, "model": "sim v2"})


def partitions(f: Fleet, *, rows: int, timeout: float, progress: Progress | None, rng: random.Random) -> ScenarioResult:
    """The rollout while a fifth of the fleet is cut off; partitions move every 0.5 s and heal after 3 s."""
    t = time.monotonic()
    _seed_fleet(f)
    setup = time.monotonic() - t
    start = time.monotonic()
    f.publish_features(sim_rows(f, rows, ts=T0 + 10, scale=2.0, per_device=10))
    f.release(f.build_model(2))
    cuts = 0
    for _ in range(6):
        f.restore()
        victims = rng.sample(f.ids, max(1, len(f.ids) // 5))
        f.cut(victims, rng.choice(["reset", "blackhole"]))
        cuts += len(victims)
        time.sleep(0.5)
    f.restore()
    timeline = f.wait_converged(timeout, include_offline=True, on_sample=progress, interval=0.1, since=start)
    return ScenarioResult("partitions", timeline, setup, {"rows": rows, "cuts": cuts})


def broker_restart(
    f: Fleet, *, rows: int, timeout: float, progress: Progress | None, rng: random.Random
) -> ScenarioResult:
    """The rollout with the broker restarted 0.3 s into it (down for 1 s)."""
    t = time.monotonic()
    _seed_fleet(f)
    setup = time.monotonic() - t
    start = time.monotonic()
    f.publish_features(sim_rows(f, rows, ts=T0 + 10, scale=2.0, per_device=10))
    f.release(f.build_model(2))
    time.sleep(0.3)
    f.restart_broker(down_s=1.0)
    timeline = f.wait_converged(timeout, on_sample=progress, interval=0.1, since=start)
    return ScenarioResult("broker-restart", timeline, setup, {"rows": rows})


def canary(f: Fleet, *, rows: int, timeout: float, progress: Progress | None, rng: random.Random) -> ScenarioResult:
    """A broken model to a 20 % canary with a 20 % failure threshold: it must halt, the fleet stays on v1."""
    t = time.monotonic()
    _seed_fleet(f)
    setup = time.monotonic() - t
    start = time.monotonic()
    result = f.release(f.build_model(2, broken=True), canary_percent=20, failure_threshold=0.2)
    release_id = result.release.id
    deadline = start + timeout
    state = "?"
    while time.monotonic() < deadline:
        state = next(r.state for r in f.publisher.releases() if r.id == release_id)
        if state == "halted":
            break
        time.sleep(0.1)
    halted_s = time.monotonic() - start
    timeline = f.wait_converged(timeout, on_sample=progress, interval=0.1, since=start)  # everyone still runs v1
    targets = f.publisher.release_targets(release_id)
    failed = sum(1 for _s, outcome in targets.values() if outcome and outcome != "installed")
    notes = {"offered": len(result.offered), "failed": failed, "state": state, "halted_after_s": round(halted_s, 2)}
    return ScenarioResult("canary", timeline, setup, notes)


SCENARIOS: dict[str, Callable[..., ScenarioResult]] = {
    "rollout": rollout,
    "partitions": partitions,
    "broker-restart": broker_restart,
    "canary": canary,
}


def run_scenario(
    name: str,
    fleet: Fleet,
    *,
    rows: int = 10_000,
    timeout: float = 120.0,
    progress: Progress | None = None,
    seed: int = 0,
    check_rows: bool = True,
) -> ScenarioResult:
    """Run scenario ``name`` (see :data:`SCENARIOS`) on a started fleet; optionally compare every row after."""
    try:
        fn = SCENARIOS[name]
    except KeyError:
        raise FleetError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}") from None
    result = fn(fleet, rows=rows, timeout=timeout, progress=progress, rng=random.Random(seed))
    if check_rows:
        result.row_mismatches = len(fleet.check_rows())
    return result


def write_plot(result: ScenarioResult, path: str, devices: int) -> None:
    """A PNG of converged devices over time (needs matplotlib: ``pip install 'edge-runtime[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise FleetError(
            "--plot needs matplotlib, which is not installed; install the 'plot' extra: "
            "pip install 'edge-runtime[plot]'"
        ) from exc
    # The curve starts at the publish, with no device converged yet.
    samples = [(0.0, 0.0), *result.timeline.samples]
    xs = [t for t, _ in samples]
    ys = [frac * 100 for _, frac in samples]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.step(xs, ys, where="post")
    ax.fill_between(xs, ys, step="post", alpha=0.15)
    milestones: dict[float, list[str]] = {}
    for m, t in sorted(result.timeline.reached.items()):
        milestones.setdefault(round(t, 3), []).append(f"{m:.0%}" if m < 1 else "all")
    for t, names in milestones.items():
        ax.axvline(t, linestyle=":", color="grey")
        ax.annotate(" / ".join(names) + f" at {t:.2f} s", (t, 8), rotation=90, fontsize=8, ha="right")
    ax.set_xlabel("seconds since the change was published")
    ax.set_ylabel("devices converged (%)")
    ax.set_xlim(0, max(xs[-1] * 1.1, 0.1))
    ax.set_ylim(0, 105)
    ax.set_title(f"cloud-sync simulate: {result.name}, {devices} devices")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
