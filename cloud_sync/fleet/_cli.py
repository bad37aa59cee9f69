"""``cloud-sync simulate``: run a fleet scenario and print how fast the devices converged."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

SCENARIO_NAMES = ("rollout", "partitions", "broker-restart", "canary")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` to the ``cloud-sync`` subcommands."""
    p = sub.add_parser(
        "simulate",
        help="simulate a fleet of devices against a local mosquitto and report how fast it converges",
        description=(
            "Start a mosquitto, the cloud publisher and N simulated devices (each with its own data directory, "
            "runtime and sync agent, behind its own fault proxy), run a scenario, and print a convergence table: "
            "seconds until 50%%, 99%% and all devices hold the new model and the cloud's feature rows. "
            "Scenarios: rollout (a new model and a feature delta), partitions (the same while a fifth of the "
            "fleet is cut off, moving), broker-restart (the broker restarts mid-rollout), canary (a broken "
            "model to a canary that must halt itself). Every device's rows are then compared with the cloud's."
        ),
    )
    p.add_argument("--devices", type=int, default=50, help="number of simulated devices (default 50)")
    p.add_argument("--scenario", choices=SCENARIO_NAMES, default="rollout", help="what happens (default rollout)")
    p.add_argument("--rows", type=int, default=10_000, help="rows in the feature delta (default 10000)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for convergence (default 120)")
    p.add_argument("--per-process", type=int, default=None, help="devices per worker process (default 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed for partitions (default 0)")
    p.add_argument("--plot", metavar="PNG", default=None, help="write convergence over time to this PNG (matplotlib)")
    p.add_argument("--no-row-check", action="store_true", help="skip comparing every device's rows with the cloud's")
    p.set_defaults(handler=simulate)


def simulate(args: argparse.Namespace) -> int:
    """Run the scenario; exit 0 when the fleet converged (and rows match), 1 otherwise."""
    from cloud_sync.fleet import FleetError
    from cloud_sync.fleet._host import DEVICES_PER_PROCESS

    if args.devices < 1:
        raise FleetError(f"--devices must be at least 1, got {args.devices}")
    if args.plot:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # fail before a long run, not after it
            raise FleetError(
                "--plot needs matplotlib, which is not installed; install the 'plot' extra: "
                "pip install 'edge-runtime[plot]'"
            )
    out = sys.stdout
    per_process = args.per_process or DEVICES_PER_PROCESS
    t0 = time.monotonic()
    print(f"starting mosquitto, the cloud publisher and {args.devices} devices ...", file=out, flush=True)
    last = [0.0]

    def progress(c: Any, t: float) -> None:
        if c.done or t - last[0] >= 0.5:
            last[0] = t
            print(f"  {t:6.1f} s  {c.converged:>5}/{c.total} converged ({c.fraction:.0%})", file=out, flush=True)

    # SIGTERM must stop the fleet like Ctrl-C does: mosquitto runs in its own session and would outlive us.
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        return _run(args, out, per_process, progress, t0)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args, out, per_process, progress, t0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, out: Any, per_process: int, progress: Any, t0: float) -> int:
    from cloud_sync.fleet import ConditionTimeout, Fleet
    from cloud_sync.fleet._scenarios import run_scenario, write_plot

    with Fleet(args.devices, per_process=per_process) as fleet:
        started = time.monotonic() - t0
        hosts = "threads" if all(d.kind == "thread" for d in fleet.devices.values()) else "worker processes"
        print(f"{args.devices} devices up in {started:.1f} s ({hosts}); scenario {args.scenario}", file=out, flush=True)
        try:
            result = run_scenario(
                args.scenario,
                fleet,
                rows=args.rows,
                timeout=args.timeout,
                progress=progress,
                seed=args.seed,
                check_rows=not args.no_row_check,
            )
        except ConditionTimeout as exc:
            print(f"cloud-sync: the fleet did not converge: {exc}", file=sys.stderr)
            return 1
    _report(result, out)
    if args.plot:
        write_plot(result, args.plot, args.devices)
        print(f"plot: {args.plot}", file=out)
    return 0 if not result.row_mismatches else 1


def _report(result: Any, out: Any) -> None:
    from edge_runtime.cli._output import print_table

    print(file=out)
    print_table(result.timeline.table(), ["converged", "devices", "seconds"], file=out)
    notes = ", ".join(f"{k}={v}" for k, v in result.notes.items())
    print(f"\nscenario {result.name}: {notes}; setup {result.setup_s:.1f} s", file=out)
    if result.row_mismatches is not None:
        verdict = (
            "every device holds exactly the cloud's rows"
            if not result.row_mismatches
            else (f"{result.row_mismatches} devices differ from the cloud's rows")
        )
        print(f"rows: {verdict}", file=out)
