"""One database URL configures everything: the eventsourcing event store and our own tables.

`sqlite:///ledger.db` (a file; `sqlite:///:memory:` is refused, the read models need a file)
or `postgresql://user@host:port/db`. Our own SQL is written once with `?` placeholders and
integer microsecond timestamps, so the same statements run on both backends; what differs
between them is the configuration's and the database's `dialect` (dialect.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
from psycopg_pool import ConnectionPool

from ledger.infrastructure.dialect import POSTGRES, SQLITE, Dialect, dialect_of

Row = tuple[Any, ...]


class DatabaseUrlError(ValueError):
    pass


@dataclass(frozen=True)
class DatabaseConfig:
    kind: Literal["sqlite", "postgres"]
    sqlite_path: str = ""
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    pool_size: int = 8

    @property
    def dialect(self) -> Dialect:
        return dialect_of(self.kind)

    @property
    def display(self) -> str:
        return self.dialect.display(self)

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host,
            port=self.port,
            user=self.user or None,
            password=self.password or None,
            dbname=self.dbname,
        )

    def eventsourcing_env(self) -> dict[str, str]:
        """Settings for the eventsourcing library: every one it reads, under its plain name
        and with the application's prefix (LEDGER_...). `Application.construct_env` merges
        os.environ into them, and a prefixed name wins over the plain one, so a setting left
        out could be changed by the process environment: a CIPHER_TOPIC, COMPRESSOR_TOPIC or
        APPLICATION_RECORDER_TOPIC would store events that are not plain JSON or not through
        our recorders (no request records, no hash chain), POSTGRES_ENABLE_DB_FUNCTIONS would
        insert the events through a database function that skips our inserts (the same),
        AGGREGATE_CACHE_MAXSIZE would cache aggregates beside the writers' caches. The
        database URL is the only configuration (tests/test_dialect.py)."""
        settings = {
            **LIBRARY_SETTINGS,
            "PERSISTENCE_MODULE": self.dialect.persistence_module,
            **self.dialect.library_settings(self),
        }
        prefix = LIBRARY_APPLICATION_NAME.upper() + "_"
        return {**settings, **{prefix + key: value for key, value in settings.items()}}


# LedgerApplication.name: the library looks a setting up as LEDGER_<KEY>, then <KEY>.
LIBRARY_APPLICATION_NAME = "Ledger"

# What Tally gives the library on both backends (the dialect adds its backend's settings).
# An empty value is the library's default, as if the setting were absent.
LIBRARY_SETTINGS: dict[str, str] = {
    "CREATE_TABLE": "false",  # tables come from our migrations
    "ORIGINATOR_ID_TYPE": "uuid",
    "APPLICATION_RECORDER_TOPIC": "",  # our factory's recorder: request records, hash chain
    "TRACKING_RECORDER_TOPIC": "",
    "PROCESS_RECORDER_TOPIC": "",
    "SINGLE_ROW_TRACKING": "t",
    "IS_SNAPSHOTTING_ENABLED": "y",  # as LedgerApplication says: the account loader's snapshots
    # The library's Mapper and JSONTranscoder with no cipher and no compressor: the state is
    # stored as plain JSON, which the hash chain hashes and the audit readers read.
    "MAPPER_TOPIC": "",
    "TRANSCODER_TOPIC": "",
    "CIPHER_TOPIC": "",
    "CIPHER_KEY": "",  # a key alone would turn on the library's AES cipher
    "COMPRESSOR_TOPIC": "",
    # No library aggregate cache: the group-commit writers own theirs (decision 6).
    "AGGREGATE_CACHE_MAXSIZE": "",
    "AGGREGATE_CACHE_FASTFORWARD": "y",
    "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": "n",
    "DEEPCOPY_FROM_AGGREGATE_CACHE": "y",
}


def parse_database_url(url: str) -> DatabaseConfig:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute/path.db
        if parsed.netloc:
            # sqlite://ledger.db would name the host "ledger.db": never guess a path from it.
            raise DatabaseUrlError(
                f"{url!r}: a SQLite URL has three slashes before a relative path "
                f"(sqlite:///{parsed.netloc}{parsed.path}) and four before an absolute one"
            )
        path = unquote(parsed.path)[1:]
        if not path or ":memory:" in path:
            raise DatabaseUrlError("sqlite URL needs a file path, e.g. sqlite:///ledger.db")
        return DatabaseConfig(kind="sqlite", sqlite_path=path)
    if parsed.scheme in ("postgresql", "postgres"):
        if not parsed.path.strip("/"):
            raise DatabaseUrlError("postgresql URL needs a database name: postgresql://host/db")
        options = parse_qs(parsed.query)
        try:
            pool_size = int(options.get("pool_size", ["8"])[0])
        except ValueError:
            raise DatabaseUrlError(f"{url!r}: pool_size must be a whole number") from None
        return DatabaseConfig(
            kind="postgres",
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            user=unquote(parsed.username or ""),
            password=unquote(parsed.password or ""),
            dbname=parsed.path.strip("/"),
            pool_size=pool_size,
        )
    raise DatabaseUrlError(
        f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://USER@HOST:PORT/DB"
    )


class DatabaseUnavailable(ValueError):
    """The database cannot be used as given; the message says why and what to do."""


def check_database(config: DatabaseConfig, must_exist: bool) -> None:
    """Fail fast, in one sentence, before anything opens a pool or creates a file: a
    missing SQLite folder (or file, for a tool that only reads), an unreachable PostgreSQL
    server, an unknown role, a database that does not exist. `must_exist`: the caller reads
    an existing ledger and must not create one (audit, export)."""
    if config.kind == "sqlite":
        path = Path(config.sqlite_path)
        if must_exist and not path.is_file():
            raise DatabaseUnavailable(f"no database at {path}: nothing to read")
        if not path.parent.is_dir():
            raise DatabaseUnavailable(
                f"no folder {path.parent} for the SQLite database {path}: create the folder "
                "first, or give another --database"
            )
        return
    try:
        psycopg.connect(config.conninfo(), connect_timeout=5).close()
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(_postgres_problem(config, str(e))) from None


def _postgres_problem(config: DatabaseConfig, error: str) -> str:
    where = f"PostgreSQL at {config.host}:{config.port}"
    if "does not exist" in error and "database" in error:
        return (
            f"database {config.dbname!r} does not exist on {where}: create it with "
            f"`createdb -h {config.host} -p {config.port}"
            + (f" -U {config.user}" if config.user else "")
            + f" {config.dbname}`"
        )
    if "role" in error and "does not exist" in error:
        return f"{where} has no role {config.user or '(your login name)'!r}: give another user"
    if "password" in error:
        return f"{where} refused the password of {config.user!r}"
    first = error.strip().splitlines()[0] if error.strip() else "no answer"
    reason = first.rsplit(": ", 1)[-1]
    return f"cannot reach {where} ({reason}): is it running, and does it accept TCP connections?"


class Cursor(Protocol):
    """What our SQL needs of a DB-API cursor (sqlite3's, or psycopg's behind _PgCursor)."""

    def execute(self, sql: str, params: Any = ..., /) -> object: ...
    def executemany(self, sql: str, rows: Any, /) -> object: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...
    @property
    def rowcount(self) -> int: ...


class Database(Protocol):
    """Our own tables (read models, tracking, migrations) on either backend."""

    config: DatabaseConfig
    dialect: Dialect  # what differs between the backends: table names, ids, bulk writes

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Cursor]:
        """`durable=False`: the commit returns before its WAL is flushed. Only for data that
        can be rebuilt from durable data (read models and their tracking position)."""
        ...

    @contextmanager
    def read(self) -> Iterator[Cursor]: ...

    def close(self) -> None: ...


class _PgCursor:
    """psycopg cursor taking our `?` placeholders."""

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(sql.replace("?", "%s"), params, prepare=True)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class PostgresDatabase:
    def __init__(self, config: DatabaseConfig, pool_size: int = 4) -> None:
        self.config = config
        self.dialect = config.dialect
        self.pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            config.conninfo(),
            min_size=1,
            max_size=pool_size,
            open=True,
            kwargs={"autocommit": False},
        )

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if not durable:
                cur.execute("SET LOCAL synchronous_commit = off")
            yield _PgCursor(cur)

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            try:
                yield _PgCursor(cur)
            finally:
                conn.rollback()

    def close(self) -> None:
        self.pool.close()


class SqliteDatabase:
    """One connection per thread; WAL mode lets readers run beside the one writer."""

    def __init__(self, config: DatabaseConfig, pool_size: int = 4) -> None:
        """`pool_size` is ignored: one connection per thread."""
        self.config = config
        self.dialect = config.dialect
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.config.sqlite_path,
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Cursor]:
        # SQLite's durability is per connection (PRAGMA synchronous), not per transaction.
        conn = self._connection()
        cur = conn.cursor()
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock later.
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        conn = self._connection()
        cur = conn.cursor()
        cur.execute("BEGIN")
        try:
            yield cur
        finally:
            conn.rollback()
            cur.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


_DATABASES: dict[Dialect, type[PostgresDatabase | SqliteDatabase]] = {
    SQLITE: SqliteDatabase,
    POSTGRES: PostgresDatabase,
}


def open_database(config: DatabaseConfig, pool_size: int = 4) -> PostgresDatabase | SqliteDatabase:
    return _DATABASES[config.dialect](config, pool_size=pool_size)
