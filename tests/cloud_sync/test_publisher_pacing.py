"""Catch-up answers paced by acks: never more than a window unacknowledged, overdue ones sent again."""

from __future__ import annotations

from cloud_sync.publisher._log import Outgoing
from cloud_sync.publisher._pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def messages(n: int) -> list[Outgoing]:
    return [Outgoing("t", b"p%d" % i, False, bytes([i]) * 16) for i in range(n)]


def test_at_most_a_window_is_unacknowledged_and_each_ack_releases_one() -> None:
    sent: list[Outgoing] = []
    pacer = Pacer(sent.extend, window=3, clock=Clock())
    msgs = messages(7)
    pacer.start("dev-a", "s", msgs)
    assert sent == msgs[:3]
    pacer.acked("dev-a", "s", msgs[1].message_id)
    assert sent == msgs[:4]
    pacer.acked("dev-a", "s", b"\xff" * 16)  # not ours: nothing moves
    pacer.acked("dev-b", "s", msgs[0].message_id)  # another device: nothing moves
    assert len(sent) == 4
    for m in msgs:
        pacer.acked("dev-a", "s", m.message_id)
    assert sent == msgs and len(pacer) == 0


def test_overdue_messages_are_resent_and_a_dead_flow_is_dropped() -> None:
    clock = Clock()
    sent: list[Outgoing] = []
    pacer = Pacer(sent.extend, window=2, stall_s=2.0, max_stalls=2, clock=clock)
    msgs = messages(4)
    pacer.start("dev-a", "s", msgs)
    pacer.acked("dev-a", "s", msgs[0].message_id)
    assert sent == msgs[:3]
    clock.now = 1.0
    pacer.tick()
    assert len(sent) == 3  # not overdue yet (the ack at t=0 was progress)
    clock.now = 2.5
    pacer.tick()
    assert sent[3:] == [msgs[1], msgs[2]]
    clock.now = 5.0
    pacer.tick()
    assert len(sent) == 7 and len(pacer) == 1
    clock.now = 7.5
    pacer.tick()
    assert len(sent) == 7 and len(pacer) == 0  # third stall in a row: dropped


def test_a_new_answer_replaces_the_flow_of_the_same_stream() -> None:
    sent: list[Outgoing] = []
    pacer = Pacer(sent.extend, window=2, clock=Clock())
    old, new = messages(5), messages(3)[::-1]
    pacer.start("dev-a", "s", old)
    pacer.start("dev-a", "other", messages(1))
    pacer.start("dev-a", "s", new)
    assert sent == [*old[:2], messages(1)[0], *new[:2]]
    pacer.start("dev-a", "s", [])  # up to date: the flow ends
    assert len(pacer) == 1
