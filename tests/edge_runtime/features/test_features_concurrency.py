"""A reader never sees half a batch while a writer commits batches (WAL snapshots, one transaction per batch)."""

from __future__ import annotations

import threading

import pytest
from _fs_helpers import T0

from edge_runtime import FeatureStore, FeatureView, Field


@pytest.mark.parametrize("n_entities", [200, 1500])  # one IN (...) statement, and several in one transaction
def test_reader_never_sees_half_a_batch(tmp_path, user, n_entities):
    fv = FeatureView(
        name="v", entities=[user], schema=[Field(name="version", dtype="int64"), Field(name="copy", dtype="int64")]
    )
    path = tmp_path / "f.db"
    store = FeatureStore(path)
    store.apply([fv])
    ids = list(range(n_entities))
    store.write_to_online_store(
        "v",
        {"user_id": ids, "version": [0] * n_entities, "copy": [0] * n_entities, "event_timestamp": [T0] * n_entities},
    )
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        last = 0
        try:
            while not stop.is_set():
                d = store.get_online_features(["v:version", "v:copy"], {"user_id": ids}).to_dict()
                versions = set(d["version"])
                assert len(versions) == 1, f"mixed versions {sorted(versions)[:5]}"
                assert d["version"] == d["copy"]
                version = versions.pop()
                assert version >= last, "a reader went back in time"
                last = version
                seen.append(version)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for version in range(1, 31):
            store.write_to_online_store(
                "v",
                {
                    "user_id": ids,
                    "version": [version] * n_entities,
                    "copy": [version] * n_entities,
                    "event_timestamp": [T0 + version] * n_entities,
                },
            )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    store.close()
    assert not errors, errors[0]
    assert len(seen) > 5
    assert max(seen) <= 30
