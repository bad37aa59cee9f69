"""The device's broker credentials file (TOML): ``username``, ``password`` and optionally ``ca_file``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cloud_sync._errors import ConfigError
from edge_runtime import ConfigError as DeviceConfigError
from edge_runtime._toml import TomlTable, load_toml


@dataclass(frozen=True)
class Credentials:
    """Per-device broker login. ``ca_file`` is the CA certificate to trust for ``mqtts://`` (None: system CAs)."""

    username: str
    password: str = field(repr=False)
    ca_file: Path | None = None


def load_credentials(path: str | Path) -> Credentials:
    """Read a credentials file; a missing file, bad TOML or a missing/mistyped key raises
    :class:`~cloud_sync.ConfigError` naming the file and the key.

    Relative ``ca_file`` paths are relative to the credentials file. The file should be readable by the agent's
    user only (it holds a password); a group- or world-readable file is accepted but logged by the agent.
    """
    p = Path(path)
    try:
        return _read_credentials(p)
    except DeviceConfigError as exc:
        raise ConfigError.translate(exc) from exc


def _read_credentials(p: Path) -> Credentials:
    table = TomlTable(load_toml(p), file=p)
    table.check_unknown({"username", "password", "ca_file"})
    username = table.get("username", str)
    password = table.get("password", str)
    if not username:
        raise table.error("username", "must not be empty", expected="the device's broker username", got=username)
    ca = table.get("ca_file", str, None)
    ca_path = None
    if ca:
        ca_path = Path(os.path.expanduser(ca))
        if not ca_path.is_absolute():
            ca_path = p.parent / ca_path
        if not ca_path.is_file():
            raise table.error("ca_file", f"file {ca_path} does not exist", expected="a PEM CA certificate", got=ca)
    return Credentials(username=username, password=password, ca_file=ca_path)
