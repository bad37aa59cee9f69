"""Topics: building, parsing, validation of device ids, names and prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_sync import InvalidTopicError
from cloud_sync.protocol import ROUTES, Direction, MessageType, TopicInfo, Topics, validate_device_id

DEVICE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,30}", fullmatch=True)
NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,30}", fullmatch=True)
PREFIXES = st.lists(NAMES, min_size=1, max_size=3).map("/".join)


def _build(t: Topics, direction: Direction, mtype: MessageType, device: str, name: str | None) -> str:
    if direction is Direction.BROADCAST:
        return t.broadcast(mtype, name)
    return getattr(t, direction.value)(device, mtype, name)


ROUTE_CASES = [(mtype, d) for mtype, (_, directions) in ROUTES.items() for d in sorted(directions)]


@pytest.mark.parametrize(("mtype", "direction"), ROUTE_CASES)
@settings(max_examples=40, deadline=None)
@given(prefix=PREFIXES, device=DEVICE_IDS, name=NAMES)
def test_every_route_builds_and_parses_back(mtype, direction, prefix, device, name):
    t = Topics(prefix)
    needs_name = "{name}" in ROUTES[mtype][0]
    topic = _build(t, direction, mtype, device, name if needs_name else None)
    info = t.parse(topic)
    expected_device = None if direction is Direction.BROADCAST else device
    assert info == TopicInfo(direction, expected_device, mtype, name if needs_name else None)


def test_examples_and_subscriptions():
    t = Topics("acme/edge")
    assert t.down("pi-7", MessageType.FEATURE_BATCH, "user_stats") == "acme/edge/dev/pi-7/down/features/user_stats"
    assert t.up("pi-7", MessageType.STATUS) == "acme/edge/dev/pi-7/up/status"
    assert t.broadcast(MessageType.MODEL_MANIFEST, "ranker") == "acme/edge/broadcast/models/ranker/manifest"
    assert t.device_subscriptions("pi-7") == ["acme/edge/dev/pi-7/down/#", "acme/edge/broadcast/#"]
    assert t.cloud_subscriptions() == ["acme/edge/dev/+/up/#"]
    assert t.device_acl() == ["pattern read acme/edge/dev/%u/down/#", "pattern write acme/edge/dev/%u/up/#"]


@pytest.mark.parametrize(
    "device", ["", "a/b", "a+b", "a#", "a\x00b", "dev ice", "a:b", "-lead", ".hidden", "x" * 129, "*", "é"]
)
def test_bad_device_ids_are_refused(device):
    with pytest.raises(InvalidTopicError) as exc:
        validate_device_id(device)
    assert exc.value.value == device
    with pytest.raises(InvalidTopicError):
        Topics().down(device, MessageType.TELEMETRY_ACK)


@settings(deadline=None)
@given(st.tuples(st.text(max_size=20), st.sampled_from("/+#\x00"), st.text(max_size=20)).map("".join))
def test_device_ids_with_topic_metacharacters_never_pass(device):
    with pytest.raises(InvalidTopicError):
        validate_device_id(device)


def test_direction_and_name_mistakes():
    t = Topics()
    with pytest.raises(InvalidTopicError, match="travel on up"):
        t.down("d", MessageType.HELLO)
    with pytest.raises(InvalidTopicError, match="travel on down"):
        t.broadcast(MessageType.MODEL_CHUNK, "m")
    with pytest.raises(InvalidTopicError, match="need a stream or model name"):
        t.down("d", MessageType.FEATURE_BATCH)
    with pytest.raises(InvalidTopicError, match="take no name"):
        t.up("d", MessageType.STATUS, "x")
    with pytest.raises(InvalidTopicError, match="stream name"):
        t.down("d", MessageType.FEATURE_BATCH, "a/b")


@pytest.mark.parametrize("prefix", ["", "/edge", "edge/", "a//b", "$SYS", "ed+ge", "edge/#", "x" * 300])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(InvalidTopicError):
        Topics(prefix)


@pytest.mark.parametrize(
    "topic",
    [
        "other/dev/d/up/status",
        "edge",
        "edge/dev/d",
        "edge/dev/d/sideways/status",
        "edge/dev/d/up/unknown",
        "edge/dev/a+b/up/status",
        "edge/dev/d/down/hello",
        "edge/broadcast/models/m/chunk",
        "edge/dev/d/down/features/bad name",
        "edge/dev/d/down/features/s/extra",
    ],
)
def test_parse_refuses_foreign_topics(topic):
    with pytest.raises(InvalidTopicError):
        Topics("edge").parse(topic)


@settings(deadline=None)
@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_invalid_topic(topic):
    t = Topics("edge")
    try:
        info = t.parse(topic)
    except InvalidTopicError:
        return
    # Anything accepted rebuilds to exactly the same topic.
    rebuilt = _build(t, info.direction, info.type, info.device or "", info.name)
    assert rebuilt == topic
