"""What differs between SQLite and PostgreSQL, in one object per backend.

Our own SQL is written once, with `?` placeholders (the PostgreSQL cursor turns them into
`%s`) and integer microsecond timestamps, so most statements run unchanged on both backends.
What cannot be written once is here: the names of the library's tables and ours, how an
aggregate id is stored and read back, how many rows go into one statement, how migrations are
applied, what the library is configured with, and what a backend allows (several writing
processes). Reach it from a database (`db.dialect`) or its configuration (`config.dialect`):
code that needs to know the backend asks the dialect, never `kind == "sqlite"`.

    SQLITE                                POSTGRES
    stored_events, rowid                  ledger_events, notification_id
    stored_snapshots                      ledger_snapshots
    requests                              ledger_requests
    checkpoints, checkpoint_heads         ledger_checkpoints, ledger_checkpoint_heads
    ids as UUID.hex text                  ids as uuid
    many rows: executemany of a VALUES    many rows: one statement over JSON rows
    one writing process                   several processes (advisory locks)
"""

from __future__ import annotations

import json
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

import psycopg

from ledger.infrastructure.single_process import SingleProcessLock


class MigrationFailed(Exception):
    """A migration's SQL was refused; its transaction, with every migration of this run,
    was rolled back."""

    def __init__(self, version: int, name: str, reason: str) -> None:
        super().__init__(f"migration {version:04d}_{name} failed ({reason}); nothing was applied")


if TYPE_CHECKING:
    from ledger.infrastructure.database import Cursor, DatabaseConfig
    from ledger.infrastructure.migrations import Migration

    # Given the applied migrations (version -> checksum): those to apply now, in order.
    Plan = Callable[[dict[int, str]], list[Migration]]

# One insert_rows call: its SQL (with "{rows}") and its rows.
Insert = tuple[str, Sequence[tuple[Any, ...]]]

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)"
)
# Seconds a connection attempt may take (libpq's connect_timeout, unless the URL says).
CONNECT_TIMEOUT_SECONDS = 3
# Seconds a caller waits for a pooled connection before it is told the database is
# unavailable: long enough for a busy pool to free one, short enough that commands during an
# outage fail well inside a client's deadline instead of queueing behind it.
POOL_WAIT_SECONDS = 5
# Seconds the health check's connection attempt and query may take (database.reachable).
PROBE_TIMEOUT_SECONDS = 2
MIGRATIONS_LOCK_KEY = 7_345_001  # PostgreSQL advisory lock, arbitrary, constant: "tally migrations"


def read_id(value: object) -> UUID:
    """An aggregate id as read back: a uuid on PostgreSQL, hex text on SQLite."""
    return value if isinstance(value, UUID) else UUID(str(value))


class Dialect(ABC):
    """One backend's differences. Two instances exist: SQLITE and POSTGRES."""

    name: ClassVar[str]  # DatabaseConfig.kind, and the folder ledger/migrations/<name>/
    events_table: ClassVar[str]  # the library's event store (application recorder)
    position_column: ClassVar[str]  # an event's position in the log (notification id)
    snapshots_table: ClassVar[str]  # the library's snapshot store
    requests_table: ClassVar[str]  # idempotency records (ledger/infrastructure/requests.py)
    checkpoints_table: ClassVar[str]  # ledger/audit/checkpoints.py
    checkpoint_heads_table: ClassVar[str]
    persistence_module: ClassVar[str]  # eventsourcing's PERSISTENCE_MODULE: our factory
    several_processes: ClassVar[bool]  # may several server processes write one database?
    integrity_error: ClassVar[type[Exception]]  # a duplicate key, as our own cursors raise it

    def __repr__(self) -> str:
        return f"<{self.name} dialect>"

    # ------------------------------------------------------------------ SQL

    @staticmethod
    def placeholders(count: int) -> str:
        """`?,?,...`: our statements use `?` on both backends."""
        return ",".join("?" * count)

    @abstractmethod
    def stored_id(self, originator_id: UUID) -> object:
        """An aggregate id as this backend's tables store it (a query parameter)."""

    def read_id(self, value: object) -> UUID:
        """An aggregate id as read back from this backend's tables."""
        return read_id(value)

    @abstractmethod
    def insert_rows(self, cur: Cursor, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run `sql`, with "{rows}" where the rows go, for many rows in one go, e.g.
        `INSERT INTO t (a, b) {rows} ON CONFLICT (a) DO NOTHING`. Nothing for no rows."""

    def insert_many(self, cur: Cursor, inserts: Sequence[Insert]) -> None:
        """Several `insert_rows` (sql, rows), each into a table of its own, none reading what
        another writes: as one statement where the backend can."""
        for sql, rows in inserts:
            self.insert_rows(cur, sql, rows)

    # ------------------------------------------------------------------ configuration

    @abstractmethod
    def display(self, config: DatabaseConfig) -> str:
        """The database's URL without its password."""

    @abstractmethod
    def library_settings(self, config: DatabaseConfig) -> dict[str, str]:
        """This backend's settings for the eventsourcing library (see
        DatabaseConfig.eventsourcing_env, which adds what both backends share)."""

    # ------------------------------------------------------------------ connections

    @abstractmethod
    def migrate(self, config: DatabaseConfig, plan: Plan) -> list[Migration]:
        """In one transaction that no other migrating process can enter: make
        schema_migrations, apply what `plan` chooses from what it holds, record each."""

    @abstractmethod
    def applied_migrations(self, config: DatabaseConfig) -> dict[int, str]:
        """version -> checksum of the applied migrations (nothing created but the table)."""

    @abstractmethod
    @contextmanager
    def snapshot_cursor(self, config: DatabaseConfig) -> Iterator[Any]:
        """A DB-API cursor on a connection of its own that reads one instant of the whole
        database and cannot write (the backend's own placeholders, not `?`)."""

    def process_lock(self, config: DatabaseConfig) -> SingleProcessLock | None:
        """What keeps a second serving process off the database, if one must be kept off
        (ledger/infrastructure/single_process.py); None where several processes may write."""
        return None


class SqliteDialect(Dialect):
    name = "sqlite"
    events_table = "stored_events"
    position_column = "rowid"
    snapshots_table = "stored_snapshots"
    requests_table = "requests"
    checkpoints_table = "checkpoints"
    checkpoint_heads_table = "checkpoint_heads"
    persistence_module = "ledger.infrastructure.recorders:TallySqliteFactory"
    several_processes = False  # one writing process per file
    integrity_error = sqlite3.IntegrityError

    def stored_id(self, originator_id: UUID | str) -> object:
        # The library's SQLite recorder stores UUID.hex text (and a str as it is).
        return originator_id.hex if isinstance(originator_id, UUID) else originator_id

    def insert_rows(self, cur: Cursor, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        # executemany of one VALUES row: a C loop in-process, no statement size limit.
        if not rows:
            return
        cur.executemany(sql.format(rows=f"VALUES ({self.placeholders(len(rows[0]))})"), rows)

    def display(self, config: DatabaseConfig) -> str:
        return f"sqlite:///{config.sqlite_path}"

    def library_settings(self, config: DatabaseConfig) -> dict[str, str]:
        return {
            "SQLITE_DBNAME": config.sqlite_path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }

    def migrate(self, config: DatabaseConfig, plan: Plan) -> list[Migration]:
        # Switching a new file to WAL needs a moment alone with it, and SQLite answers a second
        # process doing the same with "database is locked" at once (no busy wait): try again.
        for _ in range(100):
            try:
                return self._migrate_once(config, plan)
            except sqlite3.OperationalError as e:
                if "locked" not in str(e):
                    raise
                time.sleep(0.05)
        return self._migrate_once(config, plan)

    def _migrate_once(self, config: DatabaseConfig, plan: Plan) -> list[Migration]:
        # BEGIN IMMEDIATE takes the write lock up front: migrating processes go one at a time.
        conn = sqlite3.connect(config.sqlite_path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(MIGRATIONS_TABLE)
                rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
                todo = plan(dict(rows))
                for m in todo:
                    # executescript() would commit; run statement by statement in our BEGIN.
                    for statement in sqlite_statements(m.sql):
                        try:
                            conn.execute(statement)
                        except sqlite3.DatabaseError as e:
                            raise MigrationFailed(m.version, m.name, str(e)) from e
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (?,?,?)",
                        (m.version, m.name, m.checksum),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()
        return todo

    def applied_migrations(self, config: DatabaseConfig) -> dict[int, str]:
        if not Path(config.sqlite_path).exists():
            return {}  # asking must not create the file
        lite = sqlite3.connect(config.sqlite_path, timeout=30)
        try:
            lite.execute(MIGRATIONS_TABLE)
            return dict(lite.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        finally:
            lite.close()

    def process_lock(self, config: DatabaseConfig) -> SingleProcessLock | None:
        return SingleProcessLock(config.sqlite_path)

    @contextmanager
    def snapshot_cursor(self, config: DatabaseConfig) -> Iterator[Any]:
        # Read-only; a read transaction in WAL mode sees one instant.
        conn = sqlite3.connect(f"file:{config.sqlite_path}?mode=ro", uri=True)
        try:
            conn.execute("BEGIN")
            yield conn.cursor()
        finally:
            conn.close()


class PostgresDialect(Dialect):
    name = "postgres"
    # The library names its tables after the application: "Ledger".lower() + "_events".
    events_table = "ledger_events"
    position_column = "notification_id"
    snapshots_table = "ledger_snapshots"
    requests_table = "ledger_requests"
    checkpoints_table = "ledger_checkpoints"
    checkpoint_heads_table = "ledger_checkpoint_heads"
    persistence_module = "ledger.infrastructure.recorders:TallyPostgresFactory"
    several_processes = True  # advisory locks elect the projection writer
    integrity_error = psycopg.IntegrityError

    def stored_id(self, originator_id: UUID) -> object:
        return originator_id

    def insert_rows(self, cur: Cursor, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        # One statement for all the rows: executemany sends a statement per row, and long
        # multi-row VALUES lists are re-parsed by psycopg on every call. A column's type is
        # that of its first value that is not None: text, bytea, uuid, else bigint (and
        # booleans as 0/1, as SQLite stores them). The rows go as one JSON text (json.dumps
        # is C; psycopg's dumping of an array per column cost about three times the client
        # CPU: 292-326 µs against 109-122 µs for one 11-column row, 875-1,211 µs against
        # 337-461 µs for 100), read back by jsonb_array_elements with a cast per column.
        # Values JSON cannot carry exactly (not str, bytes, UUID, int) go as arrays.
        if not rows:
            return
        as_json = _json_insert(sql, rows)
        if as_json is not None:
            cur.execute(*as_json)
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        types = []
        for values_ in columns:
            sample = next((v for v in values_ if v is not None), 0)
            types.append(_pg_array_type(sample))
            if isinstance(sample, bool):
                values_[:] = [None if v is None else int(v) for v in values_]
        arrays = ", ".join(f"%b::{t}[]" for t in types)
        cur.execute(sql.format(rows=f"SELECT * FROM unnest({arrays})"), columns)

    def insert_many(self, cur: Cursor, inserts: Sequence[Insert]) -> None:
        # One statement: the inserts as data-modifying WITH queries of the last one (they
        # see one snapshot and none reads another's table), so a batch pays one statement's
        # client cost, not one per table. Rows that JSON cannot carry go on their own.
        parts: list[tuple[str, tuple[str]]] = []
        for sql, rows in inserts:
            if not rows:
                continue
            as_json = _json_insert(sql, rows)
            if as_json is None:
                self.insert_rows(cur, sql, rows)
            else:
                parts.append(as_json)
        if len(parts) == 1:
            cur.execute(*parts[0])
        elif parts:
            withs = ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(parts[:-1]))
            cur.execute(f"WITH {withs} {parts[-1][0]}", tuple(payload for _, (payload,) in parts))

    def display(self, config: DatabaseConfig) -> str:
        # Every host, and the query's parameters but those holding a secret.
        shown = [f"{k}={v}" for k, v in config.options if "password" not in k]
        if config.pool_size != 8:
            shown.insert(0, f"pool_size={config.pool_size}")
        query = "?" + "&".join(shown) if shown else ""
        return f"postgresql://{config.user}@{config.addresses}/{config.dbname}{query}"

    def library_settings(self, config: DatabaseConfig) -> dict[str, str]:
        return {
            "POSTGRES_DBNAME": config.dbname,
            # libpq's host and port lists ("h1,h2", "5432,5433"): the library passes them
            # to psycopg as keyword arguments, which take lists as they are.
            "POSTGRES_HOST": config.host_list,
            "POSTGRES_PORT": config.port_list,
            "POSTGRES_USER": config.user,
            "POSTGRES_PASSWORD": config.password,
            # The rest of the URL (target_session_attrs, connect_timeout, sslmode, ...),
            # which the library has no setting for: our factory gives it to the library's
            # pool as the conninfo its keyword arguments are laid over (recorders.py).
            "POSTGRES_CONNINFO": psycopg.conninfo.make_conninfo(**config.connection_options()),
            "POSTGRES_POOL_SIZE": str(config.pool_size),
            "POSTGRES_MAX_OVERFLOW": "4",
            "POSTGRES_LOCK_TIMEOUT": "10",
            # The library's name for how long a caller waits for a pooled connection (its
            # pool's `timeout`), as ours: the database's loss is told within it.
            "POSTGRES_CONNECT_TIMEOUT": str(POOL_WAIT_SECONDS),
            # Each connection taken from the pool is checked first (an empty query), so
            # that the dead ones a restart or failover leaves are replaced, not used.
            "POSTGRES_PRE_PING": "yes",
            # What follows is the library's default, pinned so that the process environment
            # cannot change it (DatabaseConfig.eventsourcing_env).
            "POSTGRES_SCHEMA": "",  # public: our SQL names tables without a schema
            # Off: with db functions the library skips the _insert_events our recorder
            # fills (decision 4).
            "POSTGRES_ENABLE_DB_FUNCTIONS": "no",
            "POSTGRES_GET_PASSWORD_TOPIC": "",  # the URL's password, as our connections use
            "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "5",
            "POSTGRES_MAX_WAITING": "0",
            "POSTGRES_CONN_MAX_AGE": "3600",
        }

    def migrate(self, config: DatabaseConfig, plan: Plan) -> list[Migration]:
        # A transaction-level advisory lock: two servers starting together do not race.
        with psycopg.connect(config.conninfo(), autocommit=False) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK_KEY,))
            conn.execute(MIGRATIONS_TABLE)
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            todo = plan(dict(rows))
            for m in todo:
                try:
                    conn.execute(m.sql.encode())
                except (psycopg.ProgrammingError, psycopg.DataError, psycopg.IntegrityError) as e:
                    raise MigrationFailed(m.version, m.name, str(e).strip()) from e
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s,%s,%s)",
                    (m.version, m.name, m.checksum),
                )
        return todo

    def applied_migrations(self, config: DatabaseConfig) -> dict[int, str]:
        with psycopg.connect(config.conninfo(), autocommit=True) as conn:
            conn.execute(MIGRATIONS_TABLE)
            return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())

    @contextmanager
    def snapshot_cursor(self, config: DatabaseConfig) -> Iterator[Any]:
        with psycopg.connect(config.conninfo()) as pg:
            pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            pg.read_only = True
            with pg.cursor() as cur:
                yield cur


# PostgresDialect.insert_rows' JSON rows: a value's type -> its column's kind ("null": look
# at the next row; a type not here goes as arrays), and each kind read back from `r`.
_JSON_KINDS: dict[type, str] = {
    str: "text",
    int: "bigint",
    bool: "bool",
    bytes: "bytea",
    bytearray: "bytea",
    memoryview: "bytea",
    UUID: "uuid",
    type(None): "null",
}
_JSON_COLUMNS = {
    "text": "r->>{0}",
    "bigint": "(r->>{0})::bigint",
    "bool": "(r->>{0})::bigint",  # 0/1, as SQLite stores them
    "uuid": "(r->>{0})::uuid",
    "bytea": "decode(r->>{0}, 'hex')",
}
_JSON_STATEMENTS: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[int, ...]]] = {}


def _json_insert(sql: str, rows: Sequence[tuple[Any, ...]]) -> tuple[str, tuple[str]] | None:
    """`sql` over `rows` as one JSON text (PostgresDialect.insert_rows): the statement and
    its one parameter, or None if a value has no exact JSON form here."""
    kinds = [_JSON_KINDS.get(type(v), "") for v in rows[0]]
    for i, kind in enumerate(kinds):
        if kind == "null":  # the first value that is not None says
            sample = next((r[i] for r in rows if r[i] is not None), 0)
            kinds[i] = _JSON_KINDS.get(type(sample), "")
    if "" in kinds:
        return None
    statement, convert = _json_statement(sql, tuple(kinds))
    values: Sequence[Sequence[Any]] = rows
    if convert:
        values = [_json_row(row, convert) for row in rows]
    return statement, (json.dumps(values, check_circular=False),)


def _json_statement(sql: str, kinds: tuple[str, ...]) -> tuple[str, tuple[int, ...]]:
    """`sql` over JSON rows of these column kinds, and the columns to convert first."""
    key = (sql, kinds)
    made = _JSON_STATEMENTS.get(key)
    if made is None:
        select = ", ".join(_JSON_COLUMNS[kind].format(i) for i, kind in enumerate(kinds))
        statement = sql.format(rows=f"SELECT {select} FROM jsonb_array_elements(%s::jsonb) r")
        convert = tuple(i for i, kind in enumerate(kinds) if kind in ("bytea", "uuid", "bool"))
        if len(_JSON_STATEMENTS) > 1_000:  # statements are the code's: a few dozen
            _JSON_STATEMENTS.clear()
        made = _JSON_STATEMENTS[key] = (statement, convert)
    return made


def _json_row(row: Sequence[Any], convert: tuple[int, ...]) -> list[Any]:
    """A row with its bytes as hex, UUIDs as text and booleans as 0/1 (None stays)."""
    out = list(row)
    for i in convert:
        v = out[i]
        if isinstance(v, bytes | bytearray | memoryview):
            out[i] = bytes(v).hex()
        elif isinstance(v, UUID):
            out[i] = str(v)
        elif v is not None:
            out[i] = int(v)
    return out


def _pg_array_type(sample: object) -> str:
    if isinstance(sample, str):
        return "text"
    if isinstance(sample, bytes | bytearray | memoryview):
        return "bytea"
    if isinstance(sample, UUID):
        return "uuid"
    return "bigint"


def sqlite_statements(sql: str) -> list[str]:
    """Split a SQLite script into complete statements (triggers contain inner `;`)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        if line.strip().startswith("--") and not buffer.strip():
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


SQLITE = SqliteDialect()
POSTGRES = PostgresDialect()
DIALECTS: dict[str, Dialect] = {d.name: d for d in (SQLITE, POSTGRES)}


def dialect_of(kind: str) -> Dialect:
    """The dialect of DatabaseConfig.kind ("sqlite" or "postgres")."""
    try:
        return DIALECTS[kind]
    except KeyError:
        raise ValueError(f"no dialect for database kind {kind!r}") from None
