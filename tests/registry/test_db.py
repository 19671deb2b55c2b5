"""Tests for lib_lora_train/registry/db.py: marker, WAL, named migrations, refusing foreign files."""

import os
import sqlite3

import pytest

from lib_lora_train.registry import Registry, RegistryCorruptError
from lib_lora_train.registry.db import APPLICATION_ID, MIGRATIONS, Migration, applied_migrations, connect, transaction


def test_new_registry_has_marker_wal_and_recorded_migrations(tmp_path):
    conn = connect(tmp_path / "r.sqlite")
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert applied_migrations(conn) == [m.name for m in MIGRATIONS]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"adapters", "adapter_patients", "adapter_studies", "erasures", "_migrations"} <= tables
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"adapter_patients_patient", "adapter_studies_study", "adapters_live_name"} <= indexes
    conn.close()


def test_migrations_are_applied_once_and_in_order(tmp_path):
    path = tmp_path / "r.sqlite"
    connect(path).close()
    extra = MIGRATIONS + (Migration("0099_test_table", ("CREATE TABLE test_table (x INTEGER)",)),)
    conn = connect(path, migrations=extra)
    conn.close()
    conn = connect(path, migrations=extra)  # a second open applies nothing (the table would exist twice)
    rows = conn.execute("SELECT name FROM _migrations ORDER BY rowid").fetchall()
    assert [r[0] for r in rows] == [m.name for m in extra]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(extra)
    conn.close()


def test_transaction_commits_or_rolls_back_with_nested_savepoints(tmp_path):
    conn = connect(tmp_path / "r.sqlite")
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(ZeroDivisionError):
            with transaction(conn):
                conn.execute("INSERT INTO t VALUES (2)")
                raise ZeroDivisionError
    with pytest.raises(KeyError):
        with transaction(conn):
            conn.execute("INSERT INTO t VALUES (3)")
            raise KeyError("x")
    assert [r[0] for r in conn.execute("SELECT x FROM t")] == [1]
    assert not conn.in_transaction
    conn.close()


def _foreign_sqlite(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('someone else''s data')")
    conn.commit()
    conn.close()


def _future_registry(path):
    connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _unknown_migration(path):
    connect(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO _migrations VALUES ('0002_from_a_fork', '2025-01-01')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(os.urandom(4096)), "not an SQLite database"),
    (lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4080)), "cannot be read as a database"),
    (_foreign_sqlite, "database of another program"),
    (_future_registry, "schema version 99, newer than"),
    (_unknown_migration, "migrations this medical-lora does not know"),
], ids=["random-bytes", "damaged-sqlite", "foreign-sqlite", "future-schema", "unknown-migration"])
def test_foreign_or_corrupt_files_are_refused_and_left_unchanged(home, make, message):
    make(home.registry_path)
    before = home.registry_path.read_bytes()
    with pytest.raises(RegistryCorruptError, match=message) as caught:
        Registry(home)
    assert "left unchanged" in str(caught.value)
    assert home.registry_path.read_bytes() == before


def test_a_folder_in_place_of_the_file_is_refused(home):
    home.registry_path.mkdir()
    with pytest.raises(RegistryCorruptError, match="not a file"):
        Registry(home)


def test_an_empty_file_becomes_a_registry(home):
    home.registry_path.write_bytes(b"")
    with Registry(home) as registry:
        assert registry.list() == []
