"""``cloud-sync agent --config PROFILE.toml``: run a device runtime with its sync agent in the foreground."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``agent`` command."""
    p = sub.add_parser(
        "agent",
        help="run the device sync agent in the foreground (features, models, telemetry)",
        description=(
            "Open the device runtime of a profile (feature store, model store, telemetry outbox) and run its sync "
            "agent until Ctrl-C or SIGTERM: it connects to the profile's [sync] broker (retrying with backoff "
            "while it is unreachable), applies feature batches, installs model releases and sends telemetry. "
            "On exit it publishes a retained 'offline' status."
        ),
    )
    p.add_argument("--config", required=True, metavar="PROFILE.toml", help="device profile with a [sync] section")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="override the profile's data_dir")
    p.add_argument(
        "--status-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print the agent's status as one JSON line this often (default: only at exit)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``cloud-sync agent``."""
    from cloud_sync._errors import CloudSyncError, ConfigError
    from cloud_sync.cli import _sigterm_as_interrupt
    from edge_runtime import EdgeRuntime, EdgeRuntimeError, load_config

    try:
        config = load_config(args.config, data_dir=args.data_dir)
        if config.sync is None:
            raise ConfigError(
                "sync is off in the profile (no [sync] section, or enabled = false)",
                file=args.config,
                key="sync",
                expected="[sync]",
            )
    except (EdgeRuntimeError, CloudSyncError) as exc:
        print(f"cloud-sync: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    with _sigterm_as_interrupt():
        try:
            rt = EdgeRuntime(config, start_sync=True)
        except (EdgeRuntimeError, CloudSyncError) as exc:
            print(f"cloud-sync: error: {exc}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 1))
        agent: Any = rt.agent
        print(f"agent: device {agent.device_id} → {config.sync.broker_url} (data dir {rt.data_dir})", flush=True)
        try:
            next_status = time.monotonic() + args.status_interval
            while True:
                time.sleep(0.2)
                if args.status_interval > 0 and time.monotonic() >= next_status:
                    next_status += args.status_interval
                    print(json.dumps(agent.status(), sort_keys=True), flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            final = agent.status()
            rt.close()
        print(json.dumps(final, sort_keys=True), flush=True)
    return 0
