"""The cloud publisher's configuration: where the broker is, who we are on it, where the log DB lives.

Built directly (``CloudConfig(broker_url=..., ...)``), from the JSON credentials file written by
``cloud-sync broker`` / :meth:`cloud_sync.broker.Mosquitto.write_credentials_file`
(:meth:`CloudConfig.from_credentials`), or from a TOML file (:func:`load_cloud_config`, see docs/publisher.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cloud_sync._errors import ProtocolError, PublisherError
from cloud_sync.protocol import Topics, validate_device_id

_SCHEMES = ("mqtt", "mqtts", "unix")


@dataclass(frozen=True, kw_only=True)
class CloudConfig:
    """How the cloud side reaches the broker and where it keeps its state.

    ``broker_url`` is ``mqtt://host:port``, ``mqtts://host:port`` or ``unix:///path/to/socket``. ``db_path`` is
    the SQLite file holding the delta log, the per-device feature state, releases, the fleet ledger and
    telemetry; ``release_dir`` (default: ``<db dir>/releases``) keeps a copy of every released bundle, so chunks
    are served from files the publisher owns. ``client_id`` must be unique per running worker (the worker uses
    a persistent session with it, so device messages sent while it was down are queued by the broker);
    ``shared_group`` subscribes through an MQTT 5 shared subscription so several workers split the load.
    ``log_store`` names the delta log store (``sqlite``: in ``db_path``; see ``_log.LOG_STORES``).
    """

    broker_url: str
    username: str = "cloud"
    password: str | None = None
    ca_file: Path | None = None
    topic_prefix: str = "edge"
    db_path: Path = Path("cloud-sync.db")
    release_dir: Path | None = None
    signing_key: Path | None = None
    client_id: str = "cloud-sync-worker"
    session_expiry_s: int = 86_400
    keepalive_s: int = 30
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    shared_group: str | None = None
    max_message_bytes: int = 100_000
    chunk_size: int = 64 * 1024
    failure_threshold: float = 0.2
    log_store: str = "sqlite"

    def __post_init__(self) -> None:
        parts = urlsplit(self.broker_url)
        if parts.scheme not in _SCHEMES or not (parts.path if parts.scheme == "unix" else parts.hostname):
            raise PublisherError(
                f"broker_url {self.broker_url!r} is not supported; expected mqtt://host:port, mqtts://host:port "
                "or unix:///path/to/socket"
            )
        try:
            Topics(self.topic_prefix)
            validate_device_id(self.username)
        except ProtocolError as exc:
            raise PublisherError(f"invalid cloud config: {exc}") from None
        if not self.client_id or len(self.client_id) > 128:
            raise PublisherError(f"client_id must be 1..128 characters, got {self.client_id!r}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise PublisherError(
                f"need 0 < reconnect_min_s <= reconnect_max_s, got {self.reconnect_min_s}, {self.reconnect_max_s}"
            )
        if not 1 <= self.keepalive_s <= 3600:
            raise PublisherError(f"keepalive_s must be 1..3600, got {self.keepalive_s}")
        if self.session_expiry_s < 0:
            raise PublisherError(f"session_expiry_s must be >= 0, got {self.session_expiry_s}")
        if self.max_message_bytes < 1024:
            raise PublisherError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        # A chunk travels in one message with ~200 bytes of envelope and body keys around it.
        if not 1 <= self.chunk_size <= min(4 * 1024 * 1024, self.max_message_bytes - 512):
            raise PublisherError(
                f"chunk_size {self.chunk_size} must be 1..{min(4 * 1024 * 1024, self.max_message_bytes - 512)} "
                f"(a chunk must fit in one message of max_message_bytes={self.max_message_bytes})"
            )
        if not (isinstance(self.failure_threshold, (int, float)) and 0 <= self.failure_threshold < 1):
            raise PublisherError(f"failure_threshold must be a fraction in [0, 1), got {self.failure_threshold!r}")
        from ._log import LOG_STORES

        if self.log_store not in LOG_STORES:
            raise PublisherError(f"log_store {self.log_store!r} is unknown; known: {', '.join(sorted(LOG_STORES))}")
        if self.shared_group is not None and (not self.shared_group or set("/+#") & set(self.shared_group)):
            raise PublisherError(f"shared_group {self.shared_group!r} must be a non-empty name without / + #")

    @property
    def transport(self) -> str:
        """paho's transport: ``unix`` for a socket URL, else ``tcp``."""
        return "unix" if urlsplit(self.broker_url).scheme == "unix" else "tcp"

    @property
    def host(self) -> str:
        """Host name, or the socket path for ``unix://``."""
        parts = urlsplit(self.broker_url)
        return parts.path if parts.scheme == "unix" else str(parts.hostname)

    @property
    def port(self) -> int:
        """TCP port (1883 / 8883 by default; paho wants a positive number even for a Unix socket)."""
        parts = urlsplit(self.broker_url)
        if parts.scheme == "unix":
            return 1883
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return urlsplit(self.broker_url).scheme == "mqtts"

    @property
    def releases_path(self) -> Path:
        """Directory holding the copies of released bundles."""
        return self.release_dir if self.release_dir is not None else Path(self.db_path).parent / "releases"

    def with_changes(self, **changes: Any) -> CloudConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_credentials(cls, path: str | Path, **overrides: Any) -> CloudConfig:
        """A config from the JSON credentials file written by ``cloud-sync broker`` (url, prefix, CA, users)."""
        p = Path(path)
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise PublisherError(f"{p}: cannot read the credentials file ({exc})") from exc
        if not isinstance(info, dict) or not isinstance(info.get("users"), dict) or "url" not in info:
            raise PublisherError(f"{p}: expected a JSON object with url and users (as cloud-sync broker writes)")
        username = overrides.pop("username", None) or info.get("cloud_username") or "cloud"
        password = info["users"].get(username)
        if password is None:
            raise PublisherError(f"{p}: no password for user {username!r}")
        fields: dict[str, Any] = {
            "broker_url": info["url"],
            "username": username,
            "password": password,
            "topic_prefix": info.get("prefix") or "edge",
        }
        if info.get("ca_file"):
            fields["ca_file"] = Path(info["ca_file"])
        fields.update(overrides)
        return cls(**fields)


def load_cloud_config(path: str | Path, **overrides: Any) -> CloudConfig:
    """Read a cloud config TOML file (tables ``[broker]``, ``[store]``, ``[release]``; see docs/publisher.md).

    Relative paths are resolved against the file's directory. ``overrides`` replace fields after loading.
    """
    from edge_runtime._errors import ConfigError
    from edge_runtime._toml import TomlTable, load_toml

    p = Path(path)
    base = p.resolve().parent

    def rel(value: str | None) -> Path | None:
        return None if value is None else (base / value)

    try:
        root = TomlTable(load_toml(p), file=p)
        broker = root.table("broker", required=True)
        store = root.table("store")
        release = root.table("release")
        fields: dict[str, Any] = {}
        creds = broker.get("credentials_file", str, None)
        for key, name, typ in (
            ("url", "broker_url", str),
            ("username", "username", str),
            ("password", "password", str),
            ("prefix", "topic_prefix", str),
            ("client_id", "client_id", str),
            ("shared_group", "shared_group", str),
            ("keepalive_s", "keepalive_s", int),
            ("session_expiry_s", "session_expiry_s", int),
            ("reconnect_min_s", "reconnect_min_s", float),
            ("reconnect_max_s", "reconnect_max_s", float),
            ("max_message_bytes", "max_message_bytes", int),
        ):
            value = broker.get(key, typ, None)
            if value is not None:
                fields[name] = value
        password_file = broker.get("password_file", str, None)
        if password_file is not None:
            fields["password"] = (base / password_file).read_text().strip()
        if broker.get("ca_file", str, None) is not None:
            fields["ca_file"] = rel(broker.get("ca_file", str))
        fields["db_path"] = rel(store.get("db", str, "cloud-sync.db"))
        if store.get("log", str, None) is not None:
            fields["log_store"] = store.get("log", str)
        if store.get("releases_dir", str, None) is not None:
            fields["release_dir"] = rel(store.get("releases_dir", str))
        if release.get("signing_key", str, None) is not None:
            fields["signing_key"] = rel(release.get("signing_key", str))
        if release.get("chunk_size", int, None) is not None:
            fields["chunk_size"] = release.get("chunk_size", int)
        threshold = release.get("failure_threshold", float, None)
        if threshold is not None:
            if not math.isfinite(threshold):
                raise release.error("failure_threshold", "not finite", expected="a fraction in [0, 1)")
            fields["failure_threshold"] = threshold
    except ConfigError as exc:
        raise PublisherError(str(exc)) from exc
    except OSError as exc:
        raise PublisherError(f"{p}: {exc}") from exc
    fields.update(overrides)
    if creds is not None:
        return CloudConfig.from_credentials(base / creds, **fields)
    if "broker_url" not in fields:
        raise PublisherError(f'{p}: [broker] needs url = "mqtt://host:port" or credentials_file = "..."')
    return CloudConfig(**fields)
