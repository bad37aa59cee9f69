"""The shared helpers: UTC epoch microseconds, SQLite plumbing (WAL, transactions, migrations), typed TOML."""

from __future__ import annotations

import datetime as dt
import sqlite3

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_runtime._errors import ConfigError
from edge_runtime._sqlite import Migration, connect, migrate, quote_ident, transaction
from edge_runtime._time import from_epoch_us, now_us, to_epoch_us, to_seconds
from edge_runtime._toml import TomlTable, load_toml

# --- _time ----------------------------------------------------------------------------------------------------


def test_to_epoch_us_accepts_aware_datetimes_numbers_and_numpy():
    utc = dt.datetime(2024, 2, 29, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)
    expected = 1_709_208_000_123_456
    assert to_epoch_us(utc) == expected
    assert to_epoch_us(utc.astimezone(dt.timezone(dt.timedelta(hours=-7, minutes=-30)))) == expected
    assert to_epoch_us(1_709_208_000) == 1_709_208_000_000_000
    assert to_epoch_us(1_709_208_000.123456) == expected
    assert to_epoch_us(np.int64(2)) == 2_000_000
    assert to_epoch_us(np.float32(0.5)) == 500_000
    assert to_epoch_us(np.datetime64("2024-02-29T12:00:00.123456")) == expected
    assert to_epoch_us(dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)) == -1


@pytest.mark.parametrize(
    ("value", "error", "needle"),
    [
        (dt.datetime(2024, 1, 1), ValueError, "naive datetime"),
        (True, TypeError, "a bool is not a timestamp"),
        (float("nan"), ValueError, "not finite"),
        (float("inf"), ValueError, "not finite"),
        (np.datetime64("NaT"), ValueError, "NaT"),
        ("2024-01-01", TypeError, "cannot use str"),
        (None, TypeError, "cannot use NoneType"),
    ],
)
def test_to_epoch_us_refuses_ambiguous_values(value, error, needle):
    with pytest.raises(error, match=needle):
        to_epoch_us(value)


@given(st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999))  # years 1..9999
def test_epoch_us_roundtrip(us):
    back = from_epoch_us(us)
    assert back.tzinfo is not None
    assert to_epoch_us(back) == us


def test_now_us_uses_the_clock():
    assert now_us(lambda: 12.5) == 12_500_000


def test_to_seconds():
    assert to_seconds(dt.timedelta(minutes=10)) == 600.0
    assert to_seconds(3) == 3.0
    with pytest.raises(TypeError, match="ttl must be a timedelta"):
        to_seconds("1h", what="ttl")
    with pytest.raises(TypeError):
        to_seconds(True)
    with pytest.raises(TypeError):
        to_seconds(float("nan"))


# --- _sqlite --------------------------------------------------------------------------------------------------


def test_connect_uses_wal_and_autocommit(tmp_path):
    conn = connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.isolation_level is None
    conn.close()
    mem = connect(":memory:")
    mem.execute("CREATE TABLE t (x)")
    mem.close()


def test_readonly_connection_cannot_write(tmp_path):
    path = tmp_path / "a.db"
    rw = connect(path)
    rw.execute("CREATE TABLE t (x)")
    ro = connect(path, readonly=True)
    assert ro.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    rw.close()


def test_transaction_commits_or_rolls_back(tmp_path):
    conn = connect(tmp_path / "a.db")
    conn.execute("CREATE TABLE t (x)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")

    def failing_write() -> None:
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_write()
    assert [r[0] for r in conn.execute("SELECT x FROM t")] == [1]
    assert not conn.in_transaction
    conn.close()


def test_migrate_applies_once_and_retries_a_failed_step(tmp_path):
    conn = connect(tmp_path / "a.db")
    calls = []

    def create(c):
        calls.append("create")
        c.execute("CREATE TABLE t (x)")

    def broken(c):
        c.execute("CREATE TABLE u (y)")
        raise RuntimeError("half-way")

    assert migrate(conn, [Migration("001", create)]) == ["001"]
    assert migrate(conn, [Migration("001", create)]) == []
    assert calls == ["create"]
    with pytest.raises(RuntimeError):
        migrate(conn, [Migration("001", create), Migration("002", broken)])
    # The failed step left neither its table nor its record behind.
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "u" not in tables
    assert migrate(conn, [Migration("002", lambda c: c.execute("CREATE TABLE u (y)"))]) == ["002"]
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == ["001", "002"]
    conn.close()


def test_quote_ident(tmp_path):
    conn = connect(tmp_path / "a.db")
    name = 'we"ird table'
    conn.execute(f"CREATE TABLE {quote_ident(name)} (x)")
    assert conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0] == 0
    conn.close()


# --- _toml ----------------------------------------------------------------------------------------------------


def test_load_toml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found") as err:
        load_toml(tmp_path / "none.toml")
    assert err.value.file == str(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("a = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML"):
        load_toml(bad)


def test_toml_table_typed_access(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('threads = 2\nratio = 1\nflag = true\n[runtime]\nname = "x"\n[[items]]\na = 1\n[[items]]\na = 2\n')
    t = TomlTable(load_toml(path), file=path)
    assert t.get("threads", int) == 2
    assert t.get("ratio", float) == 1.0  # an int is a valid float
    assert t.get("missing", int, 5) == 5
    assert t.table("runtime").get("name", str) == "x"
    assert [i.get("a", int) for i in t.tables("items")] == [1, 2]
    assert t.tables("items")[1].key("a") == "items[1].a"
    with pytest.raises(ConfigError, match=r"c.toml: flag: expected integer, got bool") as err:
        t.get("flag", int)
    assert err.value.key == "flag"
    assert err.value.expected == "integer"
    with pytest.raises(ConfigError, match=r"runtime.nme: required key is missing"):
        t.table("runtime").get("nme", str)
    with pytest.raises(ConfigError, match=r"unknown key; expected one of flag, ratio, threads"):
        TomlTable({"flag": 1, "threads": 1, "bogus": 1}, file=path).check_unknown({"flag", "ratio", "threads"})
    with pytest.raises(ConfigError, match=r"items\[0\]: expected a table"):
        TomlTable({"items": [1]}, file=path).tables("items")
    with pytest.raises(ConfigError, match="required key is missing"):
        t.table("absent", required=True)
