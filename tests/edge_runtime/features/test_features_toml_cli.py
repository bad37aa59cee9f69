"""Definitions from TOML (errors name file, key and expectation) and the `edge-runtime features` commands."""

from __future__ import annotations

import json
import textwrap

import pytest

from edge_runtime import (
    ConfigError,
    DefinitionError,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    StreamFeatureView,
    load_definitions,
)
from edge_runtime.cli import main

GOOD = """
[[entity]]
name = "user"
join_keys = ["user_id"]

[[feature_view]]
name = "profile"
entities = ["user"]
ttl = "1h"
max_rows = 1000
schema = [
  { name = "age", dtype = "int64" },
  { name = "score", dtype = "float32", allow_nan = true },
  { name = "emb", dtype = "float32[2]" },
]

[[request_source]]
name = "checkout"
schema = [{ name = "amount", dtype = "float64" }]

[[stream_feature_view]]
name = "orders"
entities = ["user"]
source = "order_events"
schema = [{ name = "amount", dtype = "float64" }]
aggregations = [
  { column = "amount", function = "sum", window = "10m" },
  { function = "count", window = 3600 },
]

[[on_demand_feature_view]]
name = "ratio"
sources = ["profile", "checkout"]
schema = [{ name = "ratio", dtype = "float64" }]
udf = "test_features_toml_cli:ratio_udf"

[[feature_service]]
name = "model"
features = ["profile:age", "orders:amount_sum_10m", "ratio:ratio"]
"""


def ratio_udf(inputs):
    return {"ratio": [None if s is None else a * s for a, s in zip(inputs["amount"], inputs["score"], strict=True)]}


def _write(tmp_path, text: str, name: str = "defs.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_definitions(tmp_path):
    defs = load_definitions(_write(tmp_path, GOOD))
    kinds = [type(d).__name__ for d in defs]
    assert kinds == [
        "Entity",
        "FeatureView",
        "RequestSource",
        "StreamFeatureView",
        "OnDemandFeatureView",
        "FeatureService",
    ]
    fv = defs[1]
    assert isinstance(fv, FeatureView)
    assert fv.ttl.total_seconds() == 3600
    assert fv.max_rows == 1000
    assert fv.schema[1].allow_nan
    sv = defs[3]
    assert isinstance(sv, StreamFeatureView)
    assert [a.name for a in sv.aggregations] == ["amount_sum_10m", "events_count_1h"]
    assert isinstance(defs[4], OnDemandFeatureView)
    assert defs[4].udf is ratio_udf
    assert isinstance(defs[5], FeatureService)


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ("[[entity]]\njoin_keys = ['a']\n", "entity[0].name", "required key is missing"),
        ("[[entity]]\nname = 3\n", "entity[0].name", "expected string, got int"),
        ("[[entity]]\nname = 'u'\njoin_key = ['a']\n", "entity[0].join_key", "unknown key; expected one of"),
        ("[[entitiy]]\nname = 'u'\n", "entitiy", "unknown key"),
        (
            "[[entity]]\nname='u'\n[[feature_view]]\nname='v'\nentities=['x']\nschema=[{name='a', dtype='int64'}]\n",
            "feature_view[0].entities[0]",
            "unknown entity 'x'; defined: u",
        ),
        (
            "[[entity]]\nname='u'\n[[feature_view]]\nname='v'\nentities=['u']\nschema=[{name='a', dtype='int8'}]\n",
            "feature_view[0].schema[0].dtype",
            "unknown dtype 'int8'",
        ),
        (
            "[[entity]]\nname='u'\n[[feature_view]]\nname='v'\nentities=['u']\nttl='soon'\n"
            "schema=[{name='a', dtype='int64'}]\n",
            "feature_view[0].ttl",
            "bad duration 'soon'",
        ),
        (
            "[[entity]]\nname='u'\n[[feature_view]]\nname='v'\nentities=['u']\nschema=[]\n",
            "feature_view[0].schema",
            "schema is empty",
        ),
        (
            "[[entity]]\nname='u'\n[[stream_feature_view]]\nname='s'\nentities=['u']\nsource='e'\n"
            "schema=[{name='a', dtype='int64'}]\naggregations=[{column='a', function='sum'}]\n",
            "stream_feature_view[0].aggregations[0].window",
            "required key is missing",
        ),
        (
            "[[entity]]\nname='u'\n[[feature_view]]\nname='v'\nentities=['u']\nschema=[{name='a', dtype='int64'}]\n"
            "[[on_demand_feature_view]]\nname='o'\nsources=['v']\nschema=[{name='b', dtype='int64'}]\n"
            "udf='no_such_module_xyz:f'\n",
            "on_demand_feature_view[0].udf",
            "cannot import udf",
        ),
    ],
)
def test_toml_errors_name_file_key_and_expectation(tmp_path, text, key, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle) as err:
        load_definitions(path)
    assert err.value.file == str(path)
    assert err.value.key == key
    assert err.value.expected
    assert str(err.value).startswith(f"{path}: {key}: ")


def test_toml_definition_errors_are_definition_errors(tmp_path):
    path = _write(tmp_path, "[[entity]]\nname = '9lives'\n")
    with pytest.raises(DefinitionError, match="entity name '9lives' is invalid") as err:
        load_definitions(path)
    assert err.value.key == "entity[0].name"


def test_toml_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_definitions(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_definitions(_write(tmp_path, "[[entity]\n"))


# --- CLI ------------------------------------------------------------------------------------------------------


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_apply_ls_put_get_stats(tmp_path, capsys):
    defs = _write(tmp_path, GOOD)
    db = str(tmp_path / "store.db")
    code, out, _ = _run(capsys, "features", "apply", db, str(defs))
    assert code == 0
    assert "created table for feature view profile" in out
    code, out, _ = _run(capsys, "features", "apply", db, str(defs), "--json")
    assert json.loads(out) == {"definitions": 6, "changes": []}

    code, out, _ = _run(capsys, "features", "ls", db)
    assert code == 0
    assert "profile" in out
    assert "age:int64" in out
    listed = json.loads(_run(capsys, "features", "ls", db, "--json")[1])
    assert {r["name"]: r["kind"] for r in listed}["orders"] == "stream_feature_view"

    code, out, _ = _run(
        capsys,
        "features",
        "put",
        db,
        "profile",
        "--row",
        '{"user_id": 1, "age": 41, "score": 0.5, "emb": [1, 2]}',
        "--row",
        '{"user_id": 2, "age": 7, "event_timestamp": 1000}',
    )
    assert (code, out.strip()) == (0, "wrote 2 rows to profile")
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text('{"user_id": 3, "age": 3}\n{"user_id": 4, "age": 4}\n')
    assert json.loads(_run(capsys, "features", "put", db, "profile", "--file", str(rows_file), "--json")[1]) == {
        "view": "profile",
        "rows": 2,
    }

    code, out, _ = _run(
        capsys,
        "features",
        "get",
        db,
        "--features",
        "profile:age,profile:emb",
        "--entity",
        "user_id=1",
        "--entity",
        "user_id=2",
        "--entity",
        "user_id=99",
    )
    assert code == 0
    assert "41" in out
    assert "[1.0, 2.0]" in out
    assert "<OUTSIDE_MAX_AGE>" in out  # user 2's event is from 1970
    assert "<NOT_FOUND>" in out
    got = json.loads(
        _run(capsys, "features", "get", db, "--service", "model", "--entity", "user_id=1,amount=2", "--json")[1]
    )
    assert got["values"] == {"user_id": [1], "amount": [2], "age": [41], "amount_sum_10m": [0.0], "ratio": [1.0]}
    assert got["statuses"]["age"] == ["PRESENT"]

    stats = json.loads(_run(capsys, "features", "stats", db, "--json")[1])
    assert {s["name"]: s["rows"] for s in stats} == {"profile": 4, "order_events": 0}
    code, out, _ = _run(capsys, "features", "stats", db)
    assert "profile" in out


def test_cli_errors_are_clean(tmp_path, capsys):
    defs = _write(tmp_path, GOOD)
    db = str(tmp_path / "store.db")
    _run(capsys, "features", "apply", db, str(defs))
    code, _, err = _run(capsys, "features", "put", db, "profile", "--row", '{"user_id": 1, "age": "old"}')
    assert code == 1
    assert "row 0, column 'age': expected an int64, got str" in err
    code, _, err = _run(capsys, "features", "get", db, "--features", "nope:x", "--entity", "user_id=1")
    assert code == 1
    assert "unknown feature view 'nope'; available: orders, profile, ratio" in err
    code, _, err = _run(capsys, "features", "get", db, "--features", "profile:age", "--entity", "user_id")
    assert code == 2
    assert "KEY=VALUE" in err
    code, _, err = _run(capsys, "features", "put", db, "profile", "--row", "{not json")
    assert code == 2
    assert "invalid JSON" in err
    code, _, err = _run(capsys, "features", "apply", db, str(tmp_path / "missing.toml"))
    assert code == 2
    assert "file not found" in err
    code, _, err = _run(capsys, "features", "ls", str(tmp_path / "nowhere.db"))
    assert code == 2
    assert "no feature store at" in err
    assert not (tmp_path / "nowhere.db").exists()
