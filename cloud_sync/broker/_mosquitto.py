"""Start and stop a real mosquitto with a generated configuration, for tests, benchmarks and the demo."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cloud_sync._errors import BrokerError, BrokerNotInstalledError, ProtocolError
from cloud_sync.protocol import Topics, validate_device_id

from ._passwords import new_password, write_password_file, write_private
from ._probe import CONNACK_CODES, mqtt_login
from ._tls import TlsFiles, generate_tls_files

#: Where mosquitto lives when it is not on PATH (Debian/Ubuntu put it in /usr/sbin, which is not on a normal
#: user's PATH; Homebrew in /opt/homebrew/sbin or /usr/local/sbin).
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin", "/usr/local/bin", "/opt/homebrew/bin")
INSTALL_HINT = "install it with 'sudo apt-get install mosquitto' (Debian/Ubuntu) or 'brew install mosquitto' (macOS)"
_LOG_TAIL = 4000
_BIND_ATTEMPTS = 6


def find_mosquitto(binary: str | os.PathLike[str] | None = None) -> Path:
    """The mosquitto executable: ``binary`` if given, else from PATH or the usual sbin directories."""
    if binary is not None:
        path = Path(binary)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerNotInstalledError(f"mosquitto ({path})", hint=INSTALL_HINT)
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerNotInstalledError("mosquitto", searched=("PATH", *SEARCH_DIRS), hint=INSTALL_HINT)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (mosquitto cannot bind port 0, so we must pick one)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """How to run mosquitto. Every field has a default that suits a test.

    ``port`` None picks a free port; ``unix_socket`` listens on a socket file instead of TCP. ``devices`` are
    created as users up front (more with :meth:`Mosquitto.add_device`). ``max_queued_messages`` bounds each
    client's queue (mosquitto drops QoS 1/2 messages beyond it, silently); ``max_packet_size`` 0 means
    mosquitto's default. ``extra_config`` lines are appended verbatim.
    """

    prefix: str = "edge"
    host: str = "127.0.0.1"
    port: int | None = None
    unix_socket: bool = False
    tls: bool = False
    devices: tuple[str, ...] = ()
    cloud_username: str = "cloud"
    persistence: bool = True
    max_queued_messages: int = 1000
    max_inflight_messages: int = 20
    max_packet_size: int = 0
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")
    start_timeout: float = 10.0
    extra_config: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            Topics(self.prefix)
            for name in (*self.devices, self.cloud_username):
                validate_device_id(name)
        except ProtocolError as exc:
            raise BrokerError(f"invalid broker configuration: {exc}") from None
        if self.cloud_username in self.devices:
            raise BrokerError(f"the cloud user {self.cloud_username!r} cannot also be a device")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise BrokerError(f"port must be 1..65535 or None for a free port, got {self.port}")
        if self.unix_socket and self.tls:
            raise BrokerError("TLS over a Unix socket is not supported; use a TCP port for TLS")
        for name in ("max_queued_messages", "max_inflight_messages", "max_packet_size"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise BrokerError(f"{name} must be an int >= 0, got {value!r}")


class Mosquitto:
    """One mosquitto process with a generated configuration in a private directory.

    Use it as a context manager (or :func:`start_mosquitto`). ``restart()`` keeps the port and the persistence
    file, so persistent sessions and their queued messages survive it. ``close()`` stops the broker and deletes
    the directory it created.
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        directory: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        self.config = replace(config or BrokerConfig(), **overrides)
        self.binary = find_mosquitto(binary)
        self.topics = Topics(self.config.prefix)
        self._owns_dir = directory is None
        # Absolute, because the paths end up in mosquitto.conf.
        self.directory = Path(directory or tempfile.mkdtemp(prefix="mosquitto-")).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._users: dict[str, str] = {self.config.cloud_username: new_password()}
        for device in self.config.devices:
            self._users[device] = new_password()
        self.port: int = self.config.port or 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._tls: TlsFiles | None = None
        if self.config.tls:
            self._tls = generate_tls_files(self.directory)

    # --- facts ------------------------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Host name clients connect to (the Unix socket path when ``unix_socket`` is set)."""
        return str(self.socket_path) if self.config.unix_socket else self.config.host

    @property
    def transport(self) -> str:
        """``"tcp"`` or ``"unix"`` (paho's ``transport`` argument)."""
        return "unix" if self.config.unix_socket else "tcp"

    @property
    def socket_path(self) -> Path:
        """The Unix socket file (meaningful only with ``unix_socket``)."""
        return self.directory / "mosquitto.sock"

    @property
    def url(self) -> str:
        """``mqtt://host:port``, ``mqtts://host:port`` or ``unix:///path``."""
        if self.config.unix_socket:
            return f"unix://{self.socket_path}"
        scheme = "mqtts" if self.config.tls else "mqtt"
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        """The generated CA certificate clients must trust (None without TLS)."""
        return self._tls.ca_file if self._tls else None

    @property
    def credentials(self) -> dict[str, str]:
        """``{username: password}`` of the cloud user and every device."""
        return dict(self._users)

    @property
    def cloud_credentials(self) -> tuple[str, str]:
        """(username, password) of the cloud user, who may read and write every topic under the prefix."""
        name = self.config.cloud_username
        return name, self._users[name]

    def password(self, username: str) -> str:
        """The password of ``username``; BrokerError if there is no such user."""
        try:
            return self._users[username]
        except KeyError:
            raise BrokerError(f"no user {username!r}; known: {', '.join(sorted(self._users))}") from None

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running mosquitto, or None."""
        return self._process.pid if self.running and self._process else None

    @property
    def log_path(self) -> Path:
        """The file mosquitto's log goes to (kept across restarts)."""
        return self.directory / "mosquitto.log"

    def log_text(self) -> str:
        """Everything mosquitto has logged so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def configure_client(self, client: Any, username: str) -> None:
        """Set ``username``'s credentials (and the CA when TLS is on) on a paho ``Client``.

        Create the client with ``transport=broker.transport``; then ``client.connect(broker.host, broker.port)``
        (with a Unix socket ``port`` is 0, and paho wants any positive number there, e.g. ``broker.port or 1883``).
        """
        client.username_pw_set(username, self.password(username))
        if self._tls is not None:
            client.tls_set(ca_certs=str(self._tls.ca_file))

    # --- users ------------------------------------------------------------------------------------------------

    def add_device(self, device_id: str, password: str | None = None) -> str:
        """Create (or re-key) the broker user for ``device_id`` and return its password.

        On a running broker the password file is rewritten and mosquitto reloaded (SIGHUP); this returns once a
        login with the new credentials succeeds.
        """
        try:
            validate_device_id(device_id)
        except ProtocolError as exc:
            raise BrokerError(f"cannot add device: {exc}") from None
        if device_id == self.config.cloud_username:
            raise BrokerError(f"{device_id!r} is the cloud user, not a device")
        self._users[device_id] = password or new_password()
        if self.running and self._process is not None:
            self._write_passwords()
            write_private(self.directory / "acl", self._acl_text())
            self._process.send_signal(signal.SIGHUP)
            self._wait_ready(device_id, time.monotonic() + self.config.start_timeout)
        return self._users[device_id]

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> Mosquitto:
        """Write the configuration, start mosquitto and wait until it accepts a real MQTT login."""
        if self.running:
            return self
        self._write_passwords()
        write_private(self.directory / "acl", self._acl_text())
        # A port we picked can be taken by someone else before mosquitto binds it: pick another. On a restart
        # the port must stay, so wait a little for it instead. A port the caller chose gets one attempt.
        restarting = self.config.port is None and self.port != 0
        attempts = 1 if self.config.port is not None or self.config.unix_socket else _BIND_ATTEMPTS
        deadline = time.monotonic() + self.config.start_timeout
        for attempt in range(attempts):
            if not self.config.unix_socket and self.config.port is None and not restarting:
                self.port = free_port(self.config.host)
            if self._spawn(deadline):
                return self
            if not self._bind_failed() or time.monotonic() > deadline:
                break
            if restarting:
                time.sleep(0.05 * (attempt + 1))
        raise BrokerError(f"mosquitto did not start ({self._describe()})", log=self._tail())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop mosquitto: SIGTERM (it saves its persistence file), wait, SIGKILL after ``timeout`` seconds."""
        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> Mosquitto:
        """Stop and start again on the same port with the same persistence file and users."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop mosquitto and remove the directory this object created."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def write_credentials_file(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write a JSON file (mode 0600) with the URL, CA file and every user's password; return its path."""
        target = Path(path) if path is not None else self.directory / "credentials.json"
        info = {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "transport": self.transport,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "prefix": self.config.prefix,
            "cloud_username": self.config.cloud_username,
            "users": self._users,
        }
        write_private(target, json.dumps(info, indent=2) + "\n")
        return target

    def __enter__(self) -> Mosquitto:
        try:
            return self.start()
        except BaseException:  # __exit__ will not run: never leave a half-started mosquitto behind
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {self.url} {state}>"

    # --- internals --------------------------------------------------------------------------------------------

    def _write_passwords(self) -> None:
        write_password_file(self.directory / "passwd", self._users)

    def _acl_text(self) -> str:
        prefix = self.config.prefix
        lines = [
            "# Generated by cloud_sync.broker. Devices are users named by their device id. The pattern lines",
            "# apply to every user, with %u replaced by the username of the connection (never the client id).",
            *self.topics.device_acl(),
            "",
            f"user {self.config.cloud_username}",
            f"topic readwrite {prefix}/#",
        ]
        # Fleet-wide topics per user: a pattern without %u would do too, but mosquitto warns about it.
        for user in self._users:
            if user != self.config.cloud_username:
                lines += ["", f"user {user}", f"topic read {prefix}/broadcast/#"]
        return "\n".join(lines) + "\n"

    def _config_text(self) -> str:
        c = self.config
        d = self.directory
        listener = f"listener 0 {self.socket_path}" if c.unix_socket else f"listener {self.port} {c.host}"
        lines = [
            "# Generated by cloud_sync.broker",
            "per_listener_settings false",
            listener,
            "allow_anonymous false",
            f"password_file {d / 'passwd'}",
            f"acl_file {d / 'acl'}",
            f"persistence {'true' if c.persistence else 'false'}",
            f"persistence_location {d}/",
            "persistence_file mosquitto.db",
            f"max_queued_messages {c.max_queued_messages}",
            f"max_inflight_messages {c.max_inflight_messages}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            *(f"log_type {t}" for t in c.log_types),
        ]
        if c.max_packet_size:
            lines.append(f"max_packet_size {c.max_packet_size}")
        if self._tls is not None:
            lines += [f"certfile {self._tls.cert_file}", f"keyfile {self._tls.key_file}"]
        if os.name == "posix" and os.geteuid() == 0:
            # Run as root, mosquitto drops to user "mosquitto", which cannot read our private (0700) directory.
            lines.append("user root")
        lines += list(c.extra_config)
        return "\n".join(lines) + "\n"

    def _spawn(self, deadline: float) -> bool:
        """Start one mosquitto; True once a login works, False if it exited (e.g. the port was taken)."""
        conf = self.directory / "mosquitto.conf"
        write_private(conf, self._config_text())
        if self.config.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._process = subprocess.Popen(
                [str(self.binary), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the CLI must not kill the broker mid-save
            )
        try:
            self._wait_ready(self.config.cloud_username, deadline)
        except BrokerError:
            if self._process is not None and self._process.poll() is not None:
                self._process = None
                return False
            self.stop()
            raise
        return True

    def _wait_ready(self, username: str, deadline: float) -> None:
        delay = 0.002
        last = "no attempt"
        while True:
            if self._process is None or self._process.poll() is not None:
                raise BrokerError("mosquitto exited", log=self._tail())
            try:
                code = mqtt_login(
                    host=self.config.host,
                    port=self.port,
                    username=username,
                    password=self._users[username],
                    unix_socket=self.socket_path if self.config.unix_socket else None,
                    ca_file=self.ca_file,
                    timeout=0.5,
                )
            except OSError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if code == 0:
                    return
                last = f"CONNACK {code} ({CONNACK_CODES.get(code, '?')})"
            if time.monotonic() > deadline:
                raise BrokerError(f"mosquitto did not accept a login as {username!r} in time: {last}", log=self._tail())
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _bind_failed(self) -> bool:
        return "Address already in use" in self._this_run_log()

    def _this_run_log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self) -> str:
        return self._this_run_log()[-_LOG_TAIL:]

    def _describe(self) -> str:
        return f"{self.binary}, {self.url}, config {self.directory / 'mosquitto.conf'}"


@contextlib.contextmanager
def start_mosquitto(config: BrokerConfig | None = None, **overrides: Any) -> Iterator[Mosquitto]:
    """Start a mosquitto (see :class:`BrokerConfig` for ``overrides``), yield it, then stop it and clean up."""
    broker = Mosquitto(config, **overrides)
    try:
        yield broker.start()
    finally:
        broker.close()
