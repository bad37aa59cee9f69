"""The device's broker credentials file (TOML): ``username``, ``password`` and optionally ``ca_file``."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cloud_sync._errors import ConfigError
from edge_runtime import ConfigError as DeviceConfigError
from edge_runtime._toml import TomlTable, load_toml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    """Per-device broker login. ``ca_file`` is the CA certificate to trust for ``mqtts://`` (None: system CAs)."""

    username: str
    password: str = field(repr=False)
    ca_file: Path | None = None


def load_credentials(path: str | Path) -> Credentials:
    """Read a credentials file; a missing file, bad TOML or a missing/mistyped key raises
    :class:`~cloud_sync.ConfigError` naming the file and the key.

    Relative ``ca_file`` paths are relative to the credentials file. The file holds a password, so one that every
    user of the device may read (or write) is refused (``chmod 600`` it); a group-readable one is logged.
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
    mode = stat.S_IMODE(os.stat(p).st_mode)
    if mode & 0o006:
        raise ConfigError(
            f"holds a password but every user of this device may {'write' if mode & 0o002 else 'read'} it "
            f"(mode {mode:04o}); run: chmod 600 {p}",
            file=p,
            key="credentials_file",
            expected="a file only the agent's user can read (mode 0600)",
            got=f"{mode:04o}",
        )
    if mode & 0o060:
        log.warning("%s holds a password and is group-accessible (mode %04o); chmod 600 it", p, mode)
    return Credentials(username=username, password=password, ca_file=ca_path)
