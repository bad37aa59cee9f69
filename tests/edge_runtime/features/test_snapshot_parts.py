"""FeatureStore.write_snapshot_part: staged multi-part snapshots that replace a view's content atomically."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime import Entity, FeatureStore, FeatureStoreError, FeatureView, Field

T0 = 1_700_000_000.0


def _store(path: Path) -> FeatureStore:
    store = FeatureStore(path)
    user = Entity(name="user", join_keys=["user_id"])
    store.apply([user, FeatureView(name="v", entities=[user], schema=[Field(name="x", dtype="float64")])])
    return store


def _rows(ids: list[int], x: float, ts: float = T0) -> list[dict[str, object]]:
    return [{"user_id": i, "x": x + i, "event_timestamp": ts} for i in ids]


def _content(store: FeatureStore) -> dict[int, float]:
    ids = [e["user_id"] for e in store.list_entities("v")]
    if not ids:
        return {}
    got = store.get_online_features(["v:x"], [{"user_id": i} for i in ids]).to_dict()
    return dict(zip(got["user_id"], got["x"], strict=True))


def test_parts_are_invisible_until_the_last_then_replace_the_view(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    store.write_to_online_store("v", _rows([1, 2, 3], 0.0))
    store.write_snapshot_part("v", _rows([2, 4], 10.0, T0 + 1), part=0, parts=2, state={"wm": [5, 1]})
    assert _content(store) == {1: 1.0, 2: 2.0, 3: 3.0}  # readers still see the old content
    assert store.get_state("wm") == [5, 1]  # the state committed with the part
    store.write_snapshot_part("v", _rows([5], 10.0, T0 + 1), part=1, parts=2, state={"wm": [5, 2]})
    assert _content(store) == {2: 12.0, 4: 14.0, 5: 15.0}  # 1 and 3 are gone, 2 is refreshed
    assert store.get_state("wm") == [5, 2]


def test_a_newer_stored_row_survives_an_older_snapshot_row(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    store.write_to_online_store("v", _rows([1], 100.0, T0 + 50))
    store.write_snapshot_part("v", _rows([1, 2], 0.0, T0), part=0, parts=1)
    assert _content(store) == {1: 101.0, 2: 2.0}


def test_empty_snapshot_empties_the_view_and_part_zero_restarts(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    store.write_to_online_store("v", _rows([1, 2], 0.0))
    store.write_snapshot_part("v", _rows([7], 0.0), part=0, parts=3)
    store.write_snapshot_part("v", [], part=0, parts=1, state={"wm": 1})  # restarts: the staged 7 is dropped
    assert _content(store) == {}


def test_out_of_order_part_and_bad_part_numbers_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    with pytest.raises(FeatureStoreError, match="part=0"):
        store.write_snapshot_part("v", _rows([1], 0.0), part=1, parts=2, state={"wm": 9})
    assert store.get_state("wm") is None  # nothing committed
    with pytest.raises(FeatureStoreError, match="0 <= part < parts"):
        store.write_snapshot_part("v", [], part=2, parts=2)


def test_staging_survives_a_reopen(tmp_path: Path) -> None:
    store = _store(tmp_path / "f.db")
    store.write_snapshot_part("v", _rows([1], 0.0), part=0, parts=2)
    store.close()
    store = _store(tmp_path / "f.db")
    store.write_snapshot_part("v", _rows([2], 0.0), part=1, parts=2)
    assert _content(store) == {1: 1.0, 2: 2.0}
