"""The backends' differences in one object (ledger/infrastructure/dialect.py), and the library
settings that the process environment cannot override (DatabaseConfig.eventsourcing_env)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import Cipher
from eventsourcing.utils import Environment

from ledger.application import commands as c
from ledger.audit.verify import verify
from ledger.domain.ids import account_id_key, request_id_key
from ledger.domain.program import ProgramSettings
from ledger.infrastructure.database import (
    LIBRARY_APPLICATION_NAME,
    Database,
    PostgresDatabase,
    parse_database_url,
)
from ledger.infrastructure.dialect import POSTGRES, SQLITE, dialect_of
from ledger.infrastructure.eventlog import events_table, read_id, stored_id
from ledger.infrastructure.recorders import (
    TallyPostgresApplicationRecorder,
    TallySqliteApplicationRecorder,
)
from ledger.infrastructure.requests import find_requests, requests_table
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


# ---------------------------------------------------------------------- library settings


class ReversingCipher(Cipher):
    """A cipher a hostile environment could name: the stored state would not be JSON."""

    def __init__(self, environment: Environment) -> None:
        pass

    def encrypt(self, plaintext: bytes) -> bytes:
        return plaintext[::-1]

    def decrypt(self, ciphertext: bytes) -> bytes:
        return ciphertext[::-1]


def _hostile_environment(
    monkeypatch: pytest.MonkeyPatch, backend: str, folder: Path, everything: bool
) -> None:
    """The settings named in review (plain and LEDGER_-prefixed) and, with `everything`,
    others that would point the library elsewhere than the URL."""
    library_recorder = (
        "eventsourcing.sqlite:SQLiteApplicationRecorder"
        if backend == "sqlite"
        else "eventsourcing.postgres:PostgresApplicationRecorder"
    )
    settings = {
        "POSTGRES_ENABLE_DB_FUNCTIONS": "yes",
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "CIPHER_TOPIC": f"{__name__}:ReversingCipher",
        "APPLICATION_RECORDER_TOPIC": library_recorder,
        "AGGREGATE_CACHE_MAXSIZE": "1000",
    }
    if everything:
        settings |= {
            "IS_SNAPSHOTTING_ENABLED": "no",
            "POSTGRES_SCHEMA": "elsewhere",
            "SQLITE_DBNAME": str(folder / "elsewhere.db"),
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "CIPHER_KEY": "not-a-key",
        }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setenv(f"{LIBRARY_APPLICATION_NAME.upper()}_{key}", value)


def test_every_library_setting_is_given_under_both_names() -> None:
    for url in ("sqlite:///x.db", "postgresql://u@h:5432/d"):
        env = parse_database_url(url).eventsourcing_env()
        plain = {k: v for k, v in env.items() if not k.startswith("LEDGER_")}
        assert {k: env[f"LEDGER_{k}"] for k in plain} == plain
        for key in ("CIPHER_TOPIC", "CIPHER_KEY", "COMPRESSOR_TOPIC", "APPLICATION_RECORDER_TOPIC"):
            assert plain[key] == ""
        assert plain["AGGREGATE_CACHE_MAXSIZE"] == ""
    assert (
        parse_database_url("postgresql://u@h/d").eventsourcing_env()[
            "LEDGER_POSTGRES_ENABLE_DB_FUNCTIONS"
        ]
        == "no"
    )


@pytest.mark.parametrize("everything", [False, True], ids=["named-in-review", "everything"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_server_in_a_hostile_environment_still_records_requests_and_chains(
    backend: str, everything: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hostile_environment(monkeypatch, backend, tmp_path, everything)
    with open_tally(backend) as tally:
        app = tally.app
        recorder = (
            TallySqliteApplicationRecorder
            if backend == "sqlite"
            else TallyPostgresApplicationRecorder
        )
        assert type(app.recorder) is recorder
        assert app.repository.cache is None
        assert app.snapshots is not None
        assert app.mapper.cipher is None
        assert app.mapper.compressor is None
        if backend == "postgres":
            assert not app.factory.datastore.enable_db_functions  # type: ignore[attr-defined]
            assert app.factory.datastore.schema == "public"  # type: ignore[attr-defined]
        else:
            datastore: Any = app.factory.datastore  # type: ignore[attr-defined]
            assert datastore.pool.db_name == tally.config.sqlite_path

        app.create_program(
            c.CreateProgram(program_id="p", request_id="p", settings=ProgramSettings("P", "EUR"))
        )
        app.execute(c.EnrollMember(program_id="p", member_id="m", request_id="enroll"))
        app.execute_group(
            [
                c.EarnPoints(
                    program_id="p", member_id="m", points=10 * i, request_id=f"e{i}", store_id="s"
                )
                for i in range(1, 4)
            ],
            {},
        )

        ids = [request_id_key("p", r) for r in ("p", "enroll", "e1", "e2", "e3")]
        records = find_requests(tally.database, ids)
        assert sorted(r.request_id for r, _ in records.values()) == sorted(
            ["p", "enroll", "e1", "e2", "e3"]
        )
        assert all(position > 0 for _, position in records.values())

        report = verify(tally.database)
        assert report.ok, report.detail
        assert report.events_checked == 5  # the program, the enrolment, three earns
        account = account_id_key("p", "m")
        d = tally.database.dialect
        with tally.database.read() as cur:
            cur.execute(
                f"SELECT state, hash FROM {d.events_table} WHERE originator_id = ?"
                " ORDER BY originator_version",
                (d.stored_id(account),),
            )
            rows = cur.fetchall()
        assert len(rows) == 4
        assert all(r[1] is not None for r in rows)
        assert json.loads(bytes(rows[0][0]))["member_id"] == "m"  # plain JSON, as stored
        assert app.get_account("p", "m").available == 60


# ---------------------------------------------------------------------- multi-host URLs


def test_a_failover_url_lists_its_hosts_for_our_pool_and_the_librarys() -> None:
    url = "postgresql://u:secret@10.0.0.1:5433,db2,[::1]:6000/d?target_session_attrs=read-write"
    config = parse_database_url(url)
    assert config.hosts == (("10.0.0.1", 5433), ("db2", 5432), ("::1", 6000))
    assert config.options == (("target_session_attrs", "read-write"),)
    # The password is never shown; every host and the parameters are.
    assert config.display == (
        "postgresql://u@10.0.0.1:5433,db2:5432,[::1]:6000/d?target_session_attrs=read-write"
    )
    ours = psycopg.conninfo.conninfo_to_dict(config.conninfo())
    assert ours["host"] == "10.0.0.1,db2,::1"
    assert ours["port"] == "5433,5432,6000"
    assert ours["target_session_attrs"] == "read-write"
    assert ours["connect_timeout"] == "3"  # a host that does not answer is given up soon
    env = config.eventsourcing_env()
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("10.0.0.1,db2,::1", "5433,5432,6000")
    library = psycopg.conninfo.conninfo_to_dict(env["POSTGRES_CONNINFO"])
    assert library == {
        "connect_timeout": "3",
        "target_session_attrs": "read-write",
        "options": "-c jit=off",
    }
    assert env["POSTGRES_PRE_PING"] == "yes"  # dead connections are replaced, not used


def test_the_librarys_pool_connects_with_the_urls_parameters() -> None:
    """Through the library's own pool: host list, port list and target_session_attrs reach
    libpq (the first host is a port nobody listens on, the second the shared server)."""
    from eventsourcing.utils import Environment

    from ledger.application.service import LedgerApplication
    from ledger.infrastructure.recorders import TallyPostgresFactory
    from tests.pg_clusters import free_port
    from tests.support import PG_HOST, PG_PORT, PG_USER

    url = (
        f"postgresql://{PG_USER}@127.0.0.1:{free_port()},{PG_HOST}:{PG_PORT}/postgres"
        "?target_session_attrs=read-write&application_name=tally-failover-test"
    )
    env = Environment(LedgerApplication.name, parse_database_url(url).eventsourcing_env())
    factory = TallyPostgresFactory(env)
    try:
        with factory.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT current_setting('application_name') AS name, inet_server_port() AS port,"
                " current_setting('jit') AS jit"
            ).fetchone()
        assert row == {"name": "tally-failover-test", "port": PG_PORT, "jit": "off"}
    finally:
        factory.close()


def test_every_session_starts_with_jit_off_and_the_url_can_add_settings(
    postgres_url: str,
) -> None:
    """Decision 36: our pool, the library's recorder and a one-off connection all run with
    PostgreSQL's JIT off; settings in the URL's `options` come after ours and apply too."""
    url = f"{postgres_url}?options=-c%20work_mem%3D7MB"
    tally = Tally.from_url(url)
    try:
        with tally.database.read() as cur:
            cur.execute("SELECT current_setting('jit'), current_setting('work_mem')")
            assert tuple(cur.fetchone() or ()) == ("off", "7MB")
        with tally.app.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            row = conn.execute(
                "SELECT current_setting('jit') AS jit, current_setting('work_mem') AS mem"
            ).fetchone()
        assert row == {"jit": "off", "mem": "7MB"}
        # The health probe's own connection too, with its statement timeout besides.
        database = tally.database
        assert isinstance(database, PostgresDatabase)
        assert database.reachable()
        assert database._probe is not None
        probe = database._probe.execute(
            "SELECT current_setting('jit'), current_setting('work_mem'),"
            " current_setting('statement_timeout')"
        ).fetchone()
        assert probe == ("off", "7MB", "2s")
    finally:
        tally.close()
    with psycopg.connect(parse_database_url(url).conninfo()) as conn:
        assert conn.execute("SHOW jit").fetchone() == ("off",)
