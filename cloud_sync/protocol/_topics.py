"""Building and parsing the topics of the sync protocol.

Layout, below a configurable prefix ``<p>`` (default ``edge``)::

    <p>/broadcast/<path>            cloud → every device
    <p>/dev/<device>/down/<path>    cloud → one device
    <p>/dev/<device>/up/<path>      one device → cloud

where ``<path>`` depends on the message type (see :data:`ROUTES`). The device id is the second level below the
prefix in both directions so one mosquitto ``pattern`` line per direction, keyed on the username (``%u``), is the
whole device ACL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloud_sync._errors import InvalidTopicError

from ._types import ROUTES, Direction, MessageType

#: Device ids (which are also broker usernames): letters, digits and ``. _ - @``, starting with a letter or digit.
#: An allowlist rather than a denylist of ``/ + # NUL``, because the id also lands in ACL patterns, password
#: files (``user:hash``), file names and log lines.
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*\Z")
DEVICE_ID_MAX = 128
#: Stream (feature view) and model names used as one topic level.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
NAME_MAX = 128
#: A topic prefix: one or more levels of the same characters as names, no wildcards, never starting with ``$``.
PREFIX_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*\Z")
PREFIX_MAX = 256
#: The ``device`` value of a broadcast message.
BROADCAST_DEVICE = "*"


def validate_device_id(device: str) -> str:
    """Return ``device`` if it is a valid device id, else raise :class:`InvalidTopicError` saying why."""
    if not isinstance(device, str):
        raise InvalidTopicError(f"a device id must be a str, not {type(device).__name__}", value=repr(device))
    if not 1 <= len(device) <= DEVICE_ID_MAX:
        raise InvalidTopicError(f"a device id must be 1..{DEVICE_ID_MAX} characters long", value=device)
    if not DEVICE_ID_RE.match(device):
        raise InvalidTopicError(
            "a device id may contain only letters, digits and . _ - @ and must start with a letter or digit "
            "(no '/', '+', '#', ':', spaces or control characters)",
            value=device,
        )
    return device


def validate_name(name: str, *, what: str = "stream name") -> str:
    """Return ``name`` if it can be a stream or model name (one topic level), else raise InvalidTopicError."""
    if not isinstance(name, str):
        raise InvalidTopicError(f"a {what} must be a str, not {type(name).__name__}", value=repr(name))
    if not 1 <= len(name) <= NAME_MAX:
        raise InvalidTopicError(f"a {what} must be 1..{NAME_MAX} characters long", value=name)
    if not NAME_RE.match(name):
        raise InvalidTopicError(
            f"a {what} may contain only letters, digits and . _ - and must not start with . or -", value=name
        )
    return name


@dataclass(frozen=True)
class TopicInfo:
    """What a parsed topic says: direction, device (None for broadcast), message type and stream/model name."""

    direction: Direction
    device: str | None
    type: MessageType
    name: str | None


class Topics:
    """Builds and parses the protocol's topics under one prefix.

    >>> t = Topics("acme/edge")
    >>> t.down("pi-7", MessageType.FEATURE_BATCH, "user_stats")
    'acme/edge/dev/pi-7/down/features/user_stats'
    """

    def __init__(self, prefix: str = "edge") -> None:
        if not isinstance(prefix, str) or not 1 <= len(prefix) <= PREFIX_MAX or not PREFIX_RE.match(prefix):
            raise InvalidTopicError(
                "a topic prefix is one or more '/'-separated levels of letters, digits and . _ - "
                "(no wildcards, no empty levels, no leading '$' or '/')",
                value=str(prefix),
            )
        self.prefix = prefix
        self._prefix_levels = prefix.count("/") + 1
        self._patterns: dict[Direction, list[tuple[list[str], MessageType]]] = {d: [] for d in Direction}
        for mtype, (path, directions) in ROUTES.items():
            for direction in directions:
                self._patterns[direction].append((path.split("/"), mtype))

    def __repr__(self) -> str:
        return f"Topics({self.prefix!r})"

    # --- building ---------------------------------------------------------------------------------------------

    def down(self, device: str, mtype: MessageType, name: str | None = None) -> str:
        """The topic of a cloud → device message of type ``mtype`` (``name``: stream or model, if it has one)."""
        validate_device_id(device)
        return f"{self.prefix}/dev/{device}/down/{self._path(mtype, Direction.DOWN, name)}"

    def up(self, device: str, mtype: MessageType, name: str | None = None) -> str:
        """The topic of a device → cloud message of type ``mtype``."""
        validate_device_id(device)
        return f"{self.prefix}/dev/{device}/up/{self._path(mtype, Direction.UP, name)}"

    def broadcast(self, mtype: MessageType, name: str | None = None) -> str:
        """The topic of a fleet-wide cloud → devices message of type ``mtype``."""
        return f"{self.prefix}/broadcast/{self._path(mtype, Direction.BROADCAST, name)}"

    def device_subscriptions(self, device: str) -> list[str]:
        """The filters a device subscribes to: its own ``down/`` and the fleet's ``broadcast/`` (no overlap)."""
        validate_device_id(device)
        return [f"{self.prefix}/dev/{device}/down/#", f"{self.prefix}/broadcast/#"]

    def cloud_subscriptions(self) -> list[str]:
        """The filter the cloud subscribes to: every device's ``up/``."""
        return [f"{self.prefix}/dev/+/up/#"]

    def device_acl(self) -> list[str]:
        """mosquitto ``acl_file`` pattern lines that confine each device (username = device id) to its own
        ``down/`` (read) and ``up/`` (write). Reading ``broadcast/`` is granted per user (see the broker)."""
        return [
            f"pattern read {self.prefix}/dev/%u/down/#",
            f"pattern write {self.prefix}/dev/%u/up/#",
        ]

    def _path(self, mtype: MessageType, direction: Direction, name: str | None) -> str:
        mtype = MessageType(mtype)
        template, directions = ROUTES[mtype]
        if direction not in directions:
            allowed = ", ".join(sorted(d.value for d in directions))
            raise InvalidTopicError(
                f"{mtype.value} messages travel on {allowed}, not {direction.value}", value=mtype.value
            )
        if "{name}" in template:
            if name is None:
                raise InvalidTopicError(f"{mtype.value} topics need a stream or model name", value=template)
            return template.replace("{name}", validate_name(name))
        if name is not None:
            raise InvalidTopicError(f"{mtype.value} topics take no name, got {name!r}", value=template)
        return template

    # --- parsing ----------------------------------------------------------------------------------------------

    def parse(self, topic: str) -> TopicInfo:
        """Parse a protocol topic; raise :class:`InvalidTopicError` for anything that is not one."""
        if not isinstance(topic, str):
            raise InvalidTopicError("a topic must be a str", value=repr(topic))
        levels = topic.split("/")
        if "/".join(levels[: self._prefix_levels]) != self.prefix:
            raise InvalidTopicError(f"topic is not under the prefix {self.prefix!r}", value=topic)
        rest = levels[self._prefix_levels :]
        if rest[:1] == ["broadcast"]:
            direction, device, path = Direction.BROADCAST, None, rest[1:]
        elif len(rest) >= 3 and rest[0] == "dev" and rest[2] in ("down", "up"):
            device = validate_device_id(rest[1])
            direction, path = Direction(rest[2]), rest[3:]
        else:
            raise InvalidTopicError(
                f"expected {self.prefix}/broadcast/... or {self.prefix}/dev/<device>/(down|up)/...", value=topic
            )
        for pattern, mtype in self._patterns[direction]:
            if len(pattern) != len(path):
                continue
            name = None
            for want, got in zip(pattern, path, strict=True):
                if want == "{name}":
                    name = got
                elif want != got:
                    break
            else:
                if name is not None:
                    validate_name(name)
                return TopicInfo(direction, device, mtype, name)
        raise InvalidTopicError(f"no {direction.value} message type uses the path {'/'.join(path)!r}", value=topic)
