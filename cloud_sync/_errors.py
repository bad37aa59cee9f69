"""The exception hierarchy of ``cloud_sync``: every error it raises on purpose derives from CloudSyncError.

Subclasses carry the facts a caller needs as attributes (which field of which message was wrong, how large a
message was and what the limit is, how to install a missing broker), and library errors are translated at the
boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from edge_runtime import ConfigError as _DeviceConfigError


class CloudSyncError(Exception):
    """Root of every error raised by cloud_sync."""

    exit_code: int = 1


class ConfigError(CloudSyncError, _DeviceConfigError):
    """A sync or cloud setting (a profile's ``[sync]``, a credentials file, a cloud config) is missing or wrong.

    Both a :class:`CloudSyncError` (so an app catching cloud_sync's root sees it) and an
    :class:`edge_runtime.ConfigError` (same ``file``, ``key``, ``expected`` and ``got`` attributes).
    """

    exit_code = 2

    @classmethod
    def translate(cls, exc: _DeviceConfigError) -> ConfigError:
        """The same error as cloud_sync's own (raise it ``from exc``)."""
        if isinstance(exc, cls):
            return exc
        out = cls.__new__(cls)
        Exception.__init__(out, *exc.args)
        out.file, out.key, out.expected, out.got = exc.file, exc.key, exc.expected, exc.got
        return out


# --- protocol -------------------------------------------------------------------------------------------------


class ProtocolError(CloudSyncError, ValueError):
    """A message, topic or identifier does not follow the sync protocol."""


class InvalidTopicError(ProtocolError):
    """A topic, topic prefix, device id or stream name is malformed. ``value`` is what was given."""

    def __init__(self, message: str, *, value: str) -> None:
        self.value = value
        super().__init__(f"{value!r}: {message}")


class DecodeError(ProtocolError):
    """A received payload is not a valid protocol message; nothing from it may be used.

    ``reason`` is a short stable code a caller can count or match on (``truncated``, ``magic``, ``version``,
    ``checksum``, ``oversized``, ``malformed``, ``type``, ``field``, ``compression``, ``bomb``, ``body``,
    ``route``);
    ``field`` names the offending envelope or body field when there is one.
    """

    def __init__(self, message: str, *, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"cannot decode message ({reason}): {where}{message}")


class EncodeError(ProtocolError):
    """A message cannot be encoded: a value of the wrong type, a name that is not allowed, a bad column."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        where = f"{field}: " if field else ""
        super().__init__(f"cannot encode message: {where}{message}")


class MessageTooLargeError(EncodeError):
    """An encoded message would exceed the size limit. ``size`` and ``limit`` are in bytes."""

    def __init__(self, message: str, *, size: int, limit: int, field: str | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{message} ({size} bytes > limit {limit} bytes)", field=field)


# --- broker ---------------------------------------------------------------------------------------------------


class BrokerError(CloudSyncError):
    """A broker could not be configured, started, reached or stopped. ``log`` holds the tail of its log."""

    def __init__(self, message: str, *, log: str = "") -> None:
        self.log = log
        text = message
        if log.strip():
            text += "\n--- broker log (tail) ---\n" + log.rstrip()
        super().__init__(text)


class BrokerNotInstalledError(BrokerError):
    """The broker program (mosquitto) or a library (amqtt) is not installed. ``hint`` says how to install it."""

    exit_code = 3

    def __init__(self, what: str, *, searched: tuple[str, ...] = (), hint: str) -> None:
        self.what = what
        self.searched = searched
        self.hint = hint
        where = f" (looked in {', '.join(searched)})" if searched else ""
        super().__init__(f"{what} is not installed{where}; {hint}")


# --- cloud publisher ------------------------------------------------------------------------------------------


class PublisherError(CloudSyncError):
    """The cloud publisher cannot do what was asked: bad input rows, an unknown device route, a bad config."""


class SourceError(PublisherError):
    """Rows to publish cannot be read or do not fit the feature view. ``source`` names the file or input."""

    def __init__(self, message: str, *, source: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class ReleaseError(PublisherError):
    """A model release cannot be made or changed (unsigned bundle without a key, version not newer, ...)."""


# --- device agent ---------------------------------------------------------------------------------------------


class AgentLockedError(CloudSyncError):
    """Another sync agent holds the data directory's lock. ``path`` is the lock file, ``pid`` its holder's
    process id (None when it could not be read)."""

    def __init__(self, *, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        who = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"another sync agent ({who}) is running on this data directory (lock {path}); two agents with one "
            "device id would take the MQTT session from each other — stop the other one first"
        )
