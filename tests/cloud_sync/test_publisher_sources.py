"""Reading rows to publish (CSV, JSON lines, Parquet, Python rows), routing helpers and the cloud config."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_sync import PublisherError, SourceError
from cloud_sync.protocol import Column
from cloud_sync.publisher import CloudConfig, load_cloud_config, read_columns
from cloud_sync.publisher._routing import gather, route_rows
from cloud_sync.publisher._sources import PYARROW_HINT, read_parquet


def test_csv_columns_are_typed_and_empty_cells_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,score,flag,name,when\n1,0.5,true,a,2026-01-01T00:00:00+02:00\n2,,false,,1767225600\n")
    cols = read_columns(path, timestamp_columns=["when"])
    assert cols["id"] == [1, 2] and cols["score"] == [0.5, None] and cols["flag"] == [True, False]
    assert cols["name"] == ["a", None]
    assert cols["when"] == [dt.datetime(2025, 12, 31, 22, tzinfo=dt.timezone.utc), 1767225600.0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "header row is required"),
        ("a,a\n1,2\n", "name every column once"),
        ("a,b\n1\n", "line 2 has 1 fields"),
        ("a,when\n1,2026-01-01T00:00:00\n", "has no timezone"),
        ("a,when\n1,yesterday\n", "is not an ISO-8601 timestamp"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SourceError, match=match) as info:
        read_columns(path, timestamp_columns=["when"])
    assert info.value.source == str(path)


def test_json_lines_rows_and_dicts_of_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": 1, "v": 0.5}\n\n{"id": 2, "extra": "x"}\n')
    assert read_columns(path) == {"id": [1, 2], "v": [0.5, None], "extra": [None, "x"]}
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(SourceError, match="line 2 is not a JSON object"):
        read_columns(tmp_path / "bad.jsonl")
    assert read_columns({"id": (1, 2)}) == {"id": (1, 2)}
    with pytest.raises(SourceError, match="row 1 is a int"):
        read_columns([{"id": 1}, 5])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(SourceError, match=r"unknown file type '\.txt'"):
        read_columns(tmp_path / "x.txt")
    with pytest.raises(SourceError, match="no such file"):
        read_columns(tmp_path / "missing.csv")


def test_parquet_keeps_types_and_utc_timestamps(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "score": pa.array([0.5, None], pa.float64()),
            "when": pa.array([0, 1_500_000], pa.timestamp("us", tz="Europe/Paris")),
            "naive": pa.array([2_000_000, None], pa.timestamp("ms")),
            "name": pa.array(["a", None]),
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    cols = read_columns(tmp_path / "rows.parquet")
    assert cols["id"].tolist() == [1, 2] and cols["score"] == [0.5, None]
    assert cols["when"].astype(np.int64).tolist() == [0, 1_500_000]
    assert cols["naive"] == [dt.datetime(1970, 1, 1, 0, 33, 20, tzinfo=dt.timezone.utc), None]
    assert cols["name"] == ["a", None]
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match="cannot read Parquet"):
        read_parquet(tmp_path / "broken.parquet")
    assert "pip install" in PYARROW_HINT


@given(st.lists(st.sampled_from(["d1", "d2", "d3", None]), max_size=30))
def test_routing_partitions_rows_and_gather_keeps_them(devices: list[str | None]) -> None:
    values = list(range(len(devices)))
    cols = {
        "id": Column.from_values("id", values, "int64"),
        "dev": Column.from_values("dev", devices, "string") if devices else Column("dev", "string", []),
        "tag": Column.from_values("tag", [f"t{v}" for v in values], "string"),
    }
    groups, unrouted, rest = route_rows(cols, "dev", ("id",), what="rows")
    assert "dev" not in rest
    assert sorted([*unrouted, *(i for rows in groups.values() for i in rows)]) == list(range(len(devices)))
    assert unrouted == [i for i, d in enumerate(devices) if d is None]
    for device, rows in groups.items():
        assert all(devices[i] == device for i in rows)
        picked = gather(rest, rows)
        assert picked["id"].values.tolist() == rows and picked["tag"].values == [f"t{i}" for i in rows]


def test_routing_by_composite_key_mapping() -> None:
    cols = {"a": Column.from_values("a", [1, 1, 2]), "b": Column.from_values("b", ["x", "y", "x"])}
    groups, unrouted, _ = route_rows(cols, {(1, "x"): "d1", (2, "x"): "d2"}, ("a", "b"), what="rows")
    assert groups == {"d1": [0], "d2": [2]} and unrouted == [1]
    with pytest.raises(PublisherError, match="lack the join key"):
        route_rows(cols, {}, ("c",), what="rows")
    with pytest.raises(PublisherError, match="route column 'dev'"):
        route_rows(cols, "dev", ("a",), what="rows")


def test_config_from_toml_and_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps({"url": "mqtt://127.0.0.1:1883", "prefix": "acme/edge", "users": {"cloud": "pw"}}))
    (tmp_path / "cloud.toml").write_text(
        '[broker]\ncredentials_file = "creds.json"\nshared_group = "workers"\n'
        '[store]\ndb = "data/cloud.db"\n[release]\nsigning_key = "k.pem"\nfailure_threshold = 0.3\n'
    )
    cfg = load_cloud_config(tmp_path / "cloud.toml")
    assert (cfg.broker_url, cfg.username, cfg.password, cfg.topic_prefix) == (
        "mqtt://127.0.0.1:1883",
        "cloud",
        "pw",
        "acme/edge",
    )
    assert cfg.db_path == tmp_path / "data/cloud.db" and cfg.signing_key == tmp_path / "k.pem"
    assert cfg.releases_path == tmp_path / "data/releases" and cfg.failure_threshold == 0.3
    assert cfg.shared_group == "workers" and (cfg.host, cfg.port, cfg.transport) == ("127.0.0.1", 1883, "tcp")
    unix = CloudConfig(broker_url="unix:///tmp/broker.sock")
    assert (unix.transport, unix.host) == ("unix", "/tmp/broker.sock")

    (tmp_path / "bad.toml").write_text('[broker]\nurl = "http://x"\n')
    with pytest.raises(PublisherError, match="not supported"):
        load_cloud_config(tmp_path / "bad.toml")
    (tmp_path / "typed.toml").write_text('[broker]\nurl = "mqtt://h:1"\nkeepalive_s = "10"\n')
    with pytest.raises(PublisherError, match="keepalive_s"):
        load_cloud_config(tmp_path / "typed.toml")
    (tmp_path / "none.toml").write_text("[store]\n")
    with pytest.raises(PublisherError, match="broker"):
        load_cloud_config(tmp_path / "none.toml")
    with pytest.raises(PublisherError, match="chunk_size"):
        CloudConfig(broker_url="mqtt://h:1", chunk_size=200_000)
    with pytest.raises(PublisherError, match="failure_threshold"):
        CloudConfig(broker_url="mqtt://h:1", failure_threshold=1.5)
    with pytest.raises(PublisherError, match="log_store 'redis' is unknown; known: sqlite"):
        CloudConfig(broker_url="mqtt://h:1", log_store="redis")
    with pytest.raises(PublisherError, match="no password for user 'ops'"):
        CloudConfig.from_credentials(creds, username="ops")


_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r"), min_size=1, max_size=12)


@given(
    st.lists(
        st.tuples(
            st.integers(-(2**62), 2**62),
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            _TEXT.filter(lambda t: not _looks_typed(t)),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_csv_and_json_lines_round_trip(rows: list[tuple[int, float, str]]) -> None:
    import csv
    import io
    import tempfile

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["i", "f", "s"])
    writer.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        path.write_text(buf.getvalue(), encoding="utf-8")
        cols = read_columns(path)
        jsonl = Path(tmp) / "rows.jsonl"
        jsonl.write_text("".join(json.dumps({"i": i, "f": f, "s": s}) + "\n" for i, f, s in rows), encoding="utf-8")
        assert read_columns(jsonl) == {"i": [r[0] for r in rows], "f": [r[1] for r in rows], "s": [r[2] for r in rows]}
    assert cols["i"] == [r[0] for r in rows]
    # a float column whose values are all integral is read back as ints: equal values either way
    assert [float(v) for v in cols["f"]] == [r[1] for r in rows]
    assert cols["s"] == [r[2] for r in rows]


def _looks_typed(text: str) -> bool:
    """Strings the CSV reader would type (numbers, booleans) or that csv cannot carry unchanged."""
    stripped = text.strip()
    if stripped != text or stripped.lower() in ("true", "false") or "\n" in text:
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
