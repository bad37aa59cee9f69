"""The delta log without a broker: epochs and sequence numbers, per-target state, catch-up decisions."""

from __future__ import annotations

import time
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from cloud_sync import PublisherError
from cloud_sync.protocol import Codec, FeatureBatch, Topics, decode_message
from cloud_sync.publisher._db import open_db
from cloud_sync.publisher._log import FeatureLog, Outgoing, StreamInfo

DTYPES = {"user": "int64", "score": "float64", "event_timestamp": "timestamp"}
INFO = StreamInfo("stats", "device", ("user",), DTYPES, "event_timestamp")
BINFO = StreamInfo("globals", "broadcast", ("user",), DTYPES, "event_timestamp")


@pytest.fixture
def flog() -> FeatureLog:
    return FeatureLog(open_db(":memory:"), Codec(), Topics("edge"), time.time)


def batch(
    rows: list[tuple[int, float, float]], *, view: str = "stats", tomb: list[tuple[int, Any]] | None = None
) -> FeatureBatch:
    cols = {
        "user": [r[0] for r in rows],
        "score": [r[1] for r in rows],
        "event_timestamp": [r[2] for r in rows],
    }
    tombs = None
    if tomb:
        tombs = {"user": [t[0] for t in tomb], "event_timestamp": [t[1] for t in tomb]}
    return FeatureBatch.from_columns(view, cols, dtypes=DTYPES, tombstones=tombs)


def decoded(out: list[Outgoing]) -> list[tuple[str, Any, Any]]:
    result = []
    for o in out:
        env, msg = decode_message(o.payload)
        result.append((o.topic, env, msg))
    return result


def state(flog: FeatureLog, target: str, info: StreamInfo = INFO) -> dict[int, float]:
    snap = flog.snapshot_batch(info, target).to_columns()
    return dict(zip(snap["user"].tolist(), snap["score"].tolist(), strict=True))


def test_first_delta_goes_out_as_a_snapshot_then_deltas_continue_the_epoch(flog: FeatureLog) -> None:
    results, out = flog.publish(INFO, {"dev-a": batch([(1, 0.5, 10)])}, snapshot=False)
    assert [(r.kind, r.epoch, r.seq_first, r.seq_last) for r in results] == [("snapshot", 1, 1, 1)]
    [(topic, env, msg)] = decoded(out)
    assert topic == "edge/dev/dev-a/down/features/stats"
    assert (env.device, env.stream, env.epoch, env.seq_first, msg.kind) == ("dev-a", "stats", 1, 1, "snapshot")

    results, out = flog.publish(INFO, {"dev-a": batch([(2, 0.7, 11)])}, snapshot=False)
    assert [(r.kind, r.epoch, r.seq_first) for r in results] == [("delta", 1, 2)]
    [(_, env, msg)] = decoded(out)
    assert (env.epoch, env.seq_first, msg.kind) == (1, 2, "delta")
    assert flog.head("dev-a", "stats") == (1, 2)
    assert state(flog, "dev-a") == {1: 0.5, 2: 0.7}


def test_snapshot_starts_a_new_epoch_and_empties_targets_it_does_not_mention(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.5, 10)]), "dev-b": batch([(2, 0.5, 10)])}, snapshot=False)
    results, out = flog.publish(INFO, {"dev-a": batch([(3, 0.9, 20)])}, snapshot=True)
    by_target = {r.target: r for r in results}
    assert (by_target["dev-a"].epoch, by_target["dev-a"].rows) == (2, 1)
    assert (by_target["dev-b"].kind, by_target["dev-b"].epoch, by_target["dev-b"].rows) == ("snapshot", 2, 0)
    assert state(flog, "dev-a") == {3: 0.9}
    assert state(flog, "dev-b") == {}
    # the log keeps only the current epoch
    epochs = {r[0] for r in flog.conn.execute("SELECT DISTINCT epoch FROM log")}
    assert epochs == {2}
    empty = [m for t, _, m in decoded(out) if t.endswith("dev-b/down/features/stats")]
    assert empty[0].num_rows == 0 and empty[0].kind == "snapshot"


def test_state_keeps_the_newest_event_and_tombstones_delete_only_older_rows(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.5, 10), (2, 0.6, 10)])}, snapshot=False)
    flog.publish(INFO, {"dev-a": batch([(1, 0.1, 5), (2, 0.9, 20)])}, snapshot=False)  # user 1 is older: ignored
    assert state(flog, "dev-a") == {1: 0.5, 2: 0.9}
    flog.publish(INFO, {"dev-a": batch([], tomb=[(1, 11), (2, 15)])}, snapshot=False)  # user 2's row is newer
    assert state(flog, "dev-a") == {2: 0.9}
    flog.publish(INFO, {"dev-a": batch([], tomb=[(2, None)])}, snapshot=False)  # no time: always deletes
    assert state(flog, "dev-a") == {}


def test_catch_up_replays_the_missing_deltas_with_their_sequence_numbers(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(i, 0.1, 10) for i in range(50)])}, snapshot=False)  # seq 1: snapshot
    for i in range(4):  # seq 2..5, one row each
        flog.publish(INFO, {"dev-a": batch([(i, 0.5 + i, 20 + i)])}, snapshot=False)
    plan = flog.catch_up("dev-a", "stats", 1, 3)
    assert (plan.action, plan.epoch, plan.seq_first, plan.seq_last, plan.rows) == ("replay", 1, 4, 5, 2)
    msgs = decoded(plan.messages)
    assert [(e.seq_first, e.seq_last, e.device) for _, e, _ in msgs] == [(4, 4, "dev-a"), (5, 5, "dev-a")]
    assert [m.to_columns()["user"].tolist() for _, _, m in msgs] == [[2], [3]]
    # up to date: nothing to send
    assert flog.catch_up("dev-a", "stats", 1, 5).action == "none"


def test_catch_up_sends_a_fresh_snapshot_when_replaying_would_cost_more(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.1, 10)])}, snapshot=False)
    for k in range(5):  # the same 3 entities updated over and over: replaying costs more than the state
        flog.publish(INFO, {"dev-a": batch([(u, float(k), 20 + k) for u in (1, 2, 3)])}, snapshot=False)
    plan = flog.catch_up("dev-a", "stats", 1, 1)
    assert plan.action == "snapshot"
    assert (plan.epoch, plan.seq_first, plan.rows) == (2, 1, 3)
    [(_, env, msg)] = decoded(plan.messages)
    assert (env.epoch, env.seq_first, msg.kind, msg.part, msg.parts) == (2, 1, "snapshot", 0, 1)
    assert dict(zip(msg.to_columns()["user"].tolist(), msg.to_columns()["score"].tolist(), strict=True)) == {
        1: 4.0,
        2: 4.0,
        3: 4.0,
    }
    assert flog.head("dev-a", "stats") == (2, 1)


def test_device_on_an_older_epoch_gets_the_current_epoch_from_seq_1(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.1, 10), (2, 0.2, 10)])}, snapshot=True)
    flog.publish(INFO, {"dev-a": batch([(1, 0.3, 11), (2, 0.4, 11)])}, snapshot=True)  # epoch 2
    plan = flog.catch_up("dev-a", "stats", 1, 1)  # stuck in epoch 1
    assert (plan.action, plan.epoch, plan.seq_first) == ("replay", 2, 1)
    assert decoded(plan.messages)[0][2].kind == "snapshot"
    plan = flog.catch_up("dev-a", "stats", 0, 0)  # no state at all
    assert (plan.action, plan.epoch, plan.seq_first) == ("replay", 2, 1)


def test_device_ahead_of_the_log_gets_a_snapshot_in_a_higher_epoch(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.1, 10)])}, snapshot=False)
    plan = flog.catch_up("dev-a", "stats", 7, 3)  # e.g. the cloud database was restored from a backup
    assert plan.action == "snapshot" and plan.epoch == 8
    # a second claim right away is not answered: a device must not make the cloud rebuild snapshots at will
    assert flog.catch_up("dev-a", "stats", 8, 5).action == "none"
    flog._resets.clear()  # ... 30 s later
    plan = flog.catch_up("dev-a", "stats", 8, 5)  # same epoch, seq beyond the head
    assert plan.action == "snapshot" and plan.epoch == 9
    # for a fleet-wide stream the limit is per stream, whichever device asks
    flog.publish(BINFO, {"*": batch([(1, 0.1, 10)], view="globals")}, snapshot=False)
    assert flog.catch_up("dev-a", "globals", 50, 1).epoch == 51
    assert flog.catch_up("dev-b", "globals", 60, 1).action == "none"
    assert flog.head("*", "globals") == (51, 1)


def test_broadcast_streams_go_to_the_fleet_and_catch_ups_to_the_asking_device(flog: FeatureLog) -> None:
    results, out = flog.publish(BINFO, {"*": batch([(1, 0.1, 10)], view="globals")}, snapshot=False)
    assert results[0].target == "*"
    [(topic, env, _)] = decoded(out)
    assert (topic, env.device) == ("edge/broadcast/features/globals", "*")
    flog.publish(BINFO, {"*": batch([(i, 0.2, 11) for i in range(3)], view="globals")}, snapshot=False)
    assert flog.streams_for_device("dev-z") == [("globals", "*")]
    plan = flog.catch_up("dev-z", "globals", 0, 0)
    msgs = decoded(plan.messages)
    assert plan.action == "replay"
    assert {t for t, _, _ in msgs} == {"edge/dev/dev-z/down/features/globals"}
    assert [(e.device, e.epoch, e.seq_first) for _, e, _ in msgs] == [("dev-z", 1, 1), ("dev-z", 1, 2)]


def test_a_stream_is_per_device_or_broadcast_for_life(flog: FeatureLog) -> None:
    flog.publish(INFO, {"dev-a": batch([(1, 0.1, 10)])}, snapshot=False)
    with pytest.raises(PublisherError, match="per device"):
        flog.publish(StreamInfo("stats", "broadcast", ("user",), DTYPES, None), {"*": batch([])}, snapshot=False)
    with pytest.raises(PublisherError, match="was published as float64"):
        flog.publish(
            StreamInfo("stats", "device", ("user",), {**DTYPES, "score": "int64"}, "event_timestamp"),
            {"dev-a": FeatureBatch.from_columns("stats", {"user": [1], "score": [1]})},
            snapshot=False,
        )
    # nothing of the refused publishes was logged
    assert flog.head("dev-a", "stats") == (1, 1)


def test_large_publishes_are_split_and_logged_per_message(flog: FeatureLog) -> None:
    small = FeatureLog(flog.conn, Codec(max_message_bytes=4000), Topics("edge"), time.time)
    results, out = small.publish(INFO, {"dev-a": batch([(i, i / 7, 10) for i in range(2000)])}, snapshot=True)
    assert results[0].messages == len(out) >= 3
    assert all(len(o.payload) <= 4000 for o in out)
    seqs = [e.seq_first for _, e, _ in decoded(out)]
    assert seqs == list(range(1, len(out) + 1))
    assert sum(r[0] for r in small.conn.execute("SELECT n_rows FROM log")) == 2000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete", "snapshot"]),
            st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5)), max_size=6),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_state_matches_a_newest_event_wins_model(ops: list[tuple[str, list[tuple[int, int]]]]) -> None:
    flog = FeatureLog(open_db(":memory:"), Codec(), Topics("edge"), time.time)
    model: dict[int, tuple[float, float]] = {}
    for k, (op, items) in enumerate(ops):
        if op == "delete":
            flog.publish(INFO, {"dev-a": batch([], tomb=list(items))}, snapshot=False)
            for user, t in items:
                if user in model and model[user][1] <= t:
                    del model[user]
            continue
        rows = [(user, float(k), float(t)) for user, t in items]
        flog.publish(INFO, {"dev-a": batch(rows)}, snapshot=op == "snapshot")
        if op == "snapshot":
            model = {}
        for user, score, when in rows:
            if user not in model or model[user][1] <= when:
                model[user] = (score, when)
    assert state(flog, "dev-a") == {u: s for u, (s, _) in model.items()}
