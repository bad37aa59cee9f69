"""One transaction per feature-batch message: rows, tombstones and the watermark commit together or not at all."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _agent_support import define_store, rows_batch, score_of

from cloud_sync.agent._features import FeatureSync
from edge_runtime.features import _store


def _env(seq: int) -> Any:
    return SimpleNamespace(stream="user_stats", epoch=1, seq_first=seq, seq_last=seq, message_id=bytes(16))


def test_delta_with_rows_and_tombstones_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = define_store(tmp_path / "f.db")
    sent: list[Any] = []
    sync = FeatureSync(store, lambda m, n: sent.append(m))
    sync.handle(_env(1), rows_batch([1, 2, 3], kind="snapshot"))
    assert sync.watermark("user_stats") == (1, 1)
    heard: list[tuple[str, list[Any]]] = []
    store.add_write_listener(lambda v, keys: heard.append((v, keys)))

    real = _store._delete_rows
    calls = []

    def failing(w: Any, v: Any, params: Any) -> int:
        calls.append(w.total_changes)  # the upsert already ran in this transaction
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(_store, "_delete_rows", failing)
    delta = rows_batch([1, 7], score=50.0, ts=1_700_000_100.0, tombstones=[2])
    with pytest.raises(sqlite3.OperationalError):
        sync.handle(_env(2), delta)
    assert calls
    assert score_of(store, 1) == 2.0 and score_of(store, 7) is None  # no row of the message committed
    assert score_of(store, 2) == 3.0  # nor its tombstone
    assert sync.watermark("user_stats") == (1, 1)  # nor its watermark
    assert heard == []

    monkeypatch.setattr(_store, "_delete_rows", real)
    sync.handle(_env(2), delta)  # the replay applies all of it
    assert score_of(store, 1) == 51.0 and score_of(store, 7) == 57.0 and score_of(store, 2) is None
    assert sync.watermark("user_stats") == (1, 2)
    assert heard == [("user_stats", [(1,), (7,), (2,)])]  # one notification, every changed key
    store.close()


def test_apply_changes_in_one_transaction(tmp_path: Path) -> None:
    store = define_store(tmp_path / "f.db")
    store.write_to_online_store("user_stats", [{"user_id": 1, "score": 1.0, "clicks": 1, "event_timestamp": 10.0}])
    n, deleted = store.apply_changes(
        "user_stats",
        [{"user_id": 2, "score": 2.0, "clicks": 2, "event_timestamp": 10.0}],
        [{"user_id": 1}, {"user_id": 9}],
        state={"k": {"v": 1}},
    )
    assert (n, deleted) == (1, 1)
    assert score_of(store, 1) is None and score_of(store, 2) == 2.0 and store.get_state("k") == {"v": 1}
    store.close()
