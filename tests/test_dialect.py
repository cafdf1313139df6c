"""The backends' differences in one object (ledger/infrastructure/dialect.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ledger.infrastructure.database import (
    Database,
    parse_database_url,
)
from ledger.infrastructure.dialect import POSTGRES, SQLITE, dialect_of
from ledger.infrastructure.eventlog import events_table, read_id, stored_id
from ledger.infrastructure.requests import requests_table
from ledger.runtime import Tally
from tests.support import open_tally


@pytest.fixture(params=["sqlite", "postgres"])
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    with open_tally(request.param) as t:
        yield t


# ---------------------------------------------------------------------- the dialect


def test_each_backend_has_its_dialect_reached_from_the_config_and_the_database(
    tally: Tally,
) -> None:
    dialect = tally.database.dialect
    assert dialect is tally.config.dialect is dialect_of(tally.config.kind)
    assert dialect.name == tally.config.kind
    expected = SQLITE if tally.config.kind == "sqlite" else POSTGRES
    assert dialect is expected
    # The old entry points are thin wrappers over it.
    assert events_table(tally.database) == (dialect.events_table, dialect.position_column)
    assert requests_table(tally.database) == dialect.requests_table
    oid = uuid4()
    assert stored_id(tally.database, oid) == (oid.hex if dialect is SQLITE else oid)
    assert read_id(stored_id(tally.database, oid)) == dialect.read_id(oid.hex) == oid


def test_an_unknown_kind_has_no_dialect() -> None:
    with pytest.raises(ValueError, match="no dialect"):
        dialect_of("oracle")


def test_the_table_names_are_those_the_migrations_create(tally: Tally) -> None:
    d = tally.database.dialect
    tables = [
        d.events_table,
        d.snapshots_table,
        d.requests_table,
        d.checkpoints_table,
        d.checkpoint_heads_table,
    ]
    with tally.database.read() as cur:
        for table in tables:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
        cur.execute(f"SELECT MAX({d.position_column}) FROM {d.events_table}")


def _scratch_table(db: Database) -> None:
    blob = "BLOB" if db.dialect is SQLITE else "bytea"
    ident = "TEXT" if db.dialect is SQLITE else "uuid"
    with db.transaction() as cur:
        cur.execute(
            "CREATE TABLE scratch_rows (k BIGINT PRIMARY KEY, name TEXT, flag BIGINT,"
            f" data {blob}, ident {ident}, maybe BIGINT)"
        )


def test_insert_rows_writes_many_rows_in_one_go_and_the_same_rows_on_both(tally: Tally) -> None:
    db, d = tally.database, tally.database.dialect
    _scratch_table(db)
    ids = [uuid4() for _ in range(3)]
    rows = [
        (1, "one", True, b"\x00\x01", d.stored_id(ids[0]), None),
        (2, 'two\'s "quoted"', False, b"", d.stored_id(ids[1]), 7),
        (3, None, None, None, d.stored_id(ids[2]), None),
    ]
    with db.transaction() as cur:
        d.insert_rows(
            cur, "INSERT INTO scratch_rows (k, name, flag, data, ident, maybe) {rows}", rows
        )
        d.insert_rows(cur, "INSERT INTO scratch_rows (k) {rows}", [])  # nothing, no error
        d.insert_rows(
            cur,
            "INSERT INTO scratch_rows (k, name) {rows} ON CONFLICT (k) DO UPDATE SET"
            " name = excluded.name",
            [(3, "three")],
        )
    with db.read() as cur:
        cur.execute("SELECT k, name, flag, data, ident, maybe FROM scratch_rows ORDER BY k")
        found = cur.fetchall()
    assert [
        (r[0], r[1], r[2], bytes(r[3]) if r[3] is not None else None, d.read_id(r[4]), r[5])
        for r in found
    ] == [
        (1, "one", 1, b"\x00\x01", ids[0], None),
        (2, 'two\'s "quoted"', 0, b"", ids[1], 7),
        (3, "three", None, None, ids[2], None),
    ]


def test_snapshot_cursor_reads_and_cannot_write(tally: Tally) -> None:
    d = tally.config.dialect
    with d.snapshot_cursor(tally.config) as cur:
        cur.execute("SELECT COUNT(*) FROM schema_migrations")
        assert cur.fetchone()[0] > 0
        with pytest.raises(Exception, match=r"(?i)read.?only"):
            cur.execute("DELETE FROM schema_migrations")


def test_only_sqlite_keeps_other_processes_off(tmp_path: Path) -> None:
    sqlite = parse_database_url(f"sqlite:///{tmp_path / 'x.db'}")
    postgres = parse_database_url("postgresql://u@h:5432/d")
    lock = sqlite.dialect.process_lock(sqlite)
    assert lock is not None
    assert lock.path == Path(f"{tmp_path / 'x.db'}.lock")
    assert not sqlite.dialect.several_processes
    assert postgres.dialect.process_lock(postgres) is None
    assert postgres.dialect.several_processes
    assert sqlite.display == f"sqlite:///{tmp_path / 'x.db'}"
    assert postgres.display == "postgresql://u@h:5432/d"


def test_a_duplicate_key_raises_the_dialects_integrity_error(tally: Tally) -> None:
    db = tally.database
    _scratch_table(db)
    with db.transaction() as cur:
        cur.execute("INSERT INTO scratch_rows (k) VALUES (?)", (1,))
    with pytest.raises(db.dialect.integrity_error), db.transaction() as cur:
        cur.execute("INSERT INTO scratch_rows (k) VALUES (?)", (1,))
