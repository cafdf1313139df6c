"""One database URL configures everything: the eventsourcing event store and our own tables.

`sqlite:///ledger.db` (a file; `sqlite:///:memory:` is refused, the read models need a file)
or `postgresql://user@host:port/db`, with a list of hosts for a failover pair
(`postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write`: libpq tries them in
order and keeps the one that accepts writes) and libpq's connection parameters in the query
string, beside our `pool_size`. Our own SQL is written once with `?` placeholders and
integer microsecond timestamps, so the same statements run on both backends; what differs
between them is the configuration's and the database's `dialect` (dialect.py).
"""

from __future__ import annotations

import os
import re
import select
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool

from ledger.infrastructure.dialect import (
    CONNECT_TIMEOUT_SECONDS,
    POOL_WAIT_SECONDS,
    POSTGRES,
    PROBE_TIMEOUT_SECONDS,
    SQLITE,
    Dialect,
    dialect_of,
)

Row = tuple[Any, ...]

# The commands after which psycopg drops its prepared statements (psycopg/_preparing.py).
_FORGETS_PREPARED = re.compile(
    r"\s*(?:DROP|ALTER|ROLLBACK|DISCARD|DEALLOCATE)\b", re.IGNORECASE
).match
# A transaction's own statements (PostgresDatabase.transaction).
_BEGIN = b"BEGIN"
_NOT_DURABLE = b"SET LOCAL synchronous_commit = off"
_COMMIT = b"COMMIT"


class DatabaseUrlError(ValueError):
    pass


# Set on every PostgreSQL session Tally opens (libpq's `options`): JIT compiles a plan
# whose estimated cost passes jit_above_cost, which a misestimate (a table without statistics
# yet, after a bulk import) makes of an indexed read of a few rows: a cold load of 64
# accounts took 62 ms to compile and 2 ms to run (decision 36). Our statements are short
# OLTP reads and writes; none gains from it.
SESSION_SETTINGS = "-c jit=off"


@dataclass(frozen=True)
class DatabaseConfig:
    kind: Literal["sqlite", "postgres"]
    sqlite_path: str = ""
    # PostgreSQL: one (host, port) or several, tried in order (libpq's host and port lists).
    hosts: tuple[tuple[str, int], ...] = (("127.0.0.1", 5432),)
    user: str = ""
    password: str = ""
    dbname: str = ""
    pool_size: int = 8
    # libpq connection parameters from the URL's query (target_session_attrs, sslmode, ...).
    options: tuple[tuple[str, str], ...] = ()

    @property
    def dialect(self) -> Dialect:
        return dialect_of(self.kind)

    @property
    def display(self) -> str:
        return self.dialect.display(self)

    @property
    def host(self) -> str:
        """The first host (the only one, unless the URL lists a failover pair)."""
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    @property
    def host_list(self) -> str:
        """libpq's host list: `h1,h2`."""
        return ",".join(host for host, _ in self.hosts)

    @property
    def port_list(self) -> str:
        """libpq's port list, one per host: `5432,5433`."""
        return ",".join(str(port) for _, port in self.hosts)

    @property
    def addresses(self) -> str:
        """`h1:p1,h2:p2`, as people write it."""
        return ",".join(f"{_bracketed(host)}:{port}" for host, port in self.hosts)

    def connection_options(self) -> dict[str, str]:
        """The URL's libpq parameters, with a connect timeout when it gives none: a host
        that does not answer must not hold a connection attempt for the kernel's TCP
        timeout (minutes), which would keep commands waiting during an outage. Every
        session starts with PostgreSQL's JIT off (decision 36); `options` in the URL come
        after it, so they can turn it on again."""
        given = dict(self.options)
        return {
            "connect_timeout": str(CONNECT_TIMEOUT_SECONDS),
            **given,
            "options": " ".join(filter(None, (SESSION_SETTINGS, given.get("options", "")))),
        }

    def conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host_list,
            port=self.port_list,
            user=self.user or None,
            password=self.password or None,
            dbname=self.dbname,
            **self.connection_options(),
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


# A URL's target_session_attrs must be one libpq knows (it would only say so at connect).
TARGET_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")

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
        return _parse_postgres_url(url, parsed.netloc, parsed.path, parsed.query)
    raise DatabaseUrlError(
        f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://USER@HOST:PORT/DB"
    )


def _parse_postgres_url(url: str, netloc: str, path: str, query: str) -> DatabaseConfig:
    # urlparse cannot read a host list (`h1:p1,h2:p2` has no one port): split it ourselves.
    if not path.strip("/"):
        raise DatabaseUrlError("postgresql URL needs a database name: postgresql://host/db")
    userinfo, _, hostlist = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    if password:  # the messages below quote the URL: never its password
        url = url.replace(f":{password}@", ":***@", 1)
    hosts = tuple(_host_and_port(url, entry) for entry in hostlist.split(",")) if hostlist else ()
    options: dict[str, str] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if len(values) > 1:
            raise DatabaseUrlError(f"{url!r}: {key} is given {len(values)} times")
        options[key] = values[0]
    try:
        pool_size = int(options.pop("pool_size", "8"))
    except ValueError:
        raise DatabaseUrlError(f"{url!r}: pool_size must be a whole number") from None
    if pool_size < 1:
        raise DatabaseUrlError(f"{url!r}: pool_size must be at least 1")
    attrs = options.get("target_session_attrs")
    if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
        raise DatabaseUrlError(
            f"{url!r}: target_session_attrs={attrs} is not one of {', '.join(TARGET_SESSION_ATTRS)}"
        )
    for key in ("host", "hostaddr", "port", "user", "password", "dbname"):
        if key in options:
            raise DatabaseUrlError(f"{url!r}: give {key} in the URL itself, not as ?{key}=")
    try:  # libpq itself says which parameters it does not know
        psycopg.conninfo.make_conninfo(**options)
    except psycopg.ProgrammingError as e:
        raise DatabaseUrlError(f"{url!r}: {str(e).strip()}") from None
    return DatabaseConfig(
        kind="postgres",
        hosts=hosts or (("127.0.0.1", 5432),),
        user=unquote(user),
        password=unquote(password),
        dbname=unquote(path.strip("/")),
        pool_size=pool_size,
        options=tuple(options.items()),
    )


def _host_and_port(url: str, entry: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (5432 when no port is given)."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise DatabaseUrlError(f"{url!r}: {entry!r} is not [IPv6] or [IPv6]:PORT")
        port = rest[1:] if rest else ""
    else:
        host, _, port = entry.partition(":")
    if not host:
        raise DatabaseUrlError(f"{url!r}: an empty host in the host list")
    if not port:
        return unquote(host), 5432
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DatabaseUrlError(f"{url!r}: the port of {entry!r} must be a number from 1 to 65535")
    return unquote(host), int(port)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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
        _check_sqlite_file(path, must_exist)
        return
    try:
        psycopg.connect(config.conninfo()).close()
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(_postgres_problem(config, str(e))) from None


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path, read_only: bool) -> None:
    """What sqlite3 would only say as "unable to open database file" or "file is not a
    database", in words that name the file and the fix."""
    if path.is_dir():
        raise DatabaseUnavailable(f"{path} is a folder, not a SQLite database file")
    if path.exists():
        with path.open("rb") as f:  # a file no one may read raises PermissionError here
            header = f.read(len(SQLITE_HEADER))
        if header and header != SQLITE_HEADER:
            raise DatabaseUnavailable(f"{path} is not a SQLite database")
        if not read_only and not os.access(path, os.W_OK):
            raise DatabaseUnavailable(f"cannot write the SQLite database {path}: it is read-only")
    if not read_only and not os.access(path.parent, os.W_OK):
        # SQLite writes its journal beside the file, so the folder must be writable too.
        raise DatabaseUnavailable(
            f"cannot write in {path.parent}, where the SQLite database {path} and its journal "
            "go: give a folder this user may write"
        )


def is_standby(config: DatabaseConfig) -> bool:
    """A PostgreSQL server in recovery (a standby: it takes no writes)."""
    try:
        with psycopg.connect(config.conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.OperationalError as e:
        raise DatabaseUnavailable(_postgres_problem(config, str(e))) from None
    return bool(row and row[0])


def _postgres_problem(config: DatabaseConfig, error: str) -> str:
    where = f"PostgreSQL at {config.addresses}"
    if "does not exist" in error and "database" in error:
        return (
            f"database {config.dbname!r} does not exist on {where}: create it with "
            f"`createdb -h {config.hosts[0][0]} -p {config.hosts[0][1]}"
            + (f" -U {config.user}" if config.user else "")
            + f" {config.dbname}`"
        )
    if "role" in error and "does not exist" in error:
        return f"{where} has no role {config.user or '(your login name)'!r}: give another user"
    if "password" in error:
        return f"{where} refused the password of {config.user!r}"
    first = error.strip().splitlines()[0] if error.strip() else "no answer"
    if first.startswith("connection is bad: invalid"):
        # libpq refused the URL's own settings before trying any server.
        return f"the database URL has a bad setting: {first.split(': ', 1)[1]}"
    reason = first.rsplit(": ", 1)[-1]
    return f"cannot reach {where} ({reason}): is it running, and does it accept TCP connections?"


# What a database that went away (restarted, failed over, unreachable, out of connections)
# raises: psycopg's OperationalError (PoolTimeout and AdminShutdown among them) and
# InterfaceError (a connection already closed), and ReadOnlySqlTransaction, the answer of a
# primary demoted under an open connection; the eventsourcing library raises its own errors
# `from` psycopg's, so the cause chain is searched. (Not sqlite3's OperationalError: SQLite
# raises it for a missing table too.) None of them says anything about the request: it may
# be retried as it is, once the database is back.
_LOST = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.ReadOnlySqlTransaction)


def database_lost(error: BaseException) -> bool:
    """Did `error` (or what it was raised from) come from losing the PostgreSQL database?"""
    return caused_by(error, _LOST)


def session_advisory_lock(
    config: DatabaseConfig, key: int, **connect: Any
) -> psycopg.Connection[Any] | None:
    """A PostgreSQL session advisory lock on a connection of its own, or None when another
    session holds it. The lock lasts as long as the returned connection: the server drops
    it when that connection goes, however its holder dies (the projection writers, the
    relay)."""
    conn = psycopg.connect(config.conninfo(), autocommit=True, **connect)
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    if row and row[0]:
        return conn
    conn.close()
    return None


def caused_by(error: BaseException, kinds: type | tuple[type, ...]) -> bool:
    """Is `error`, or anything it was raised from (the library wraps psycopg's errors in its
    own), one of `kinds`?"""
    seen: BaseException | None = error
    for _ in range(10):  # the cause chain is short; bounded all the same
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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

    def reachable(self) -> bool:
        """Can this database take writes now? A cheap check, bounded by PROBE_TIMEOUT_SECONDS
        (the health watch asks it about every second)."""
        ...

    def close(self) -> None: ...


class _PgCursor:
    """psycopg cursor taking our `?` placeholders. In a transaction its statements are
    pipelined (`pipeline`): sent as they come and read back only when a result is asked
    for (a fetch, `rowcount`) or at the commit."""

    def __init__(self, cursor: psycopg.Cursor[Row], pipeline: psycopg.Pipeline | None = None):
        self._cursor = cursor
        self._pipeline = pipeline
        # A statement that makes psycopg forget the statements it prepared (ALTER, DROP, ...:
        # it then deallocates them all on the server) came in this pipeline: what it prepares
        # around it may be out of step with the server, so nothing more is prepared and the
        # connection is closed after the transaction (PostgresDatabase.transaction).
        self.unprepared = False

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        if self._pipeline is not None and not self.unprepared and _FORGETS_PREPARED(sql):
            self.unprepared = True
        self._cursor.execute(sql.replace("?", "%s"), params, prepare=not self.unprepared)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cursor.executemany(sql.replace("?", "%s"), rows)

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        if self._pipeline is not None:
            self._pipeline.sync()  # the statement's result is read back here, not before
        return self._cursor.rowcount


def check_when_readable(conn: psycopg.Connection[Any]) -> None:
    """The pools' check of a connection taken from them, without a round trip when there
    is nothing to check: an idle connection has nothing to read unless the server said
    something since it was last used, which is how a restart, a failover or a terminated
    backend shows (its FATAL message, or the socket's end). Only then the full check (an
    empty query), which fails on a dead connection, so that the pool replaces it."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        ConnectionPool.check_connection(conn)


class PostgresDatabase:
    def __init__(self, config: DatabaseConfig, pool_size: int = 4) -> None:
        self.config = config
        self.dialect = config.dialect
        # After PostgreSQL restarts or fails over, every pooled connection is dead: `check`
        # finds that out when one is taken (check_when_readable: a round trip only for a
        # connection the server has said something on) and the pool replaces it, so a dead
        # connection is never handed to a caller, and a caller waits at most
        # POOL_WAIT_SECONDS for a live one (PoolTimeout: database_lost, UNAVAILABLE).
        # Autocommit: a read is its statements alone (READ COMMITTED gives each statement
        # its own snapshot in a transaction too, so BEGIN and ROLLBACK around a read were
        # two round trips for nothing); a transaction says BEGIN and COMMIT itself.
        self.pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            config.conninfo(),
            min_size=1,
            max_size=pool_size,
            open=True,
            kwargs={"autocommit": True},
            check=check_when_readable,
            timeout=POOL_WAIT_SECONDS,
        )
        self._probe: psycopg.Connection[Row] | None = None  # reachable()'s connection

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[Cursor]:
        """One transaction, pipelined: BEGIN and the statements go out as they are made and
        the round trips are only where a result is read (a fetch, `rowcount`) and the
        COMMIT. A statement's error surfaces at the next of those, inside this block, and
        rolls the whole transaction back; the connection is then closed, not pooled again
        (psycopg's record of the statements it prepared on it may be wrong after an error
        in a pipeline), as it is after a transaction with DDL in it (_PgCursor.unprepared)."""
        with self.pool.connection() as conn:
            try:
                with conn.pipeline() as pipeline, conn.cursor() as cur:
                    cur.execute(_BEGIN)
                    if not durable:
                        cur.execute(_NOT_DURABLE)
                    ours = _PgCursor(cur, pipeline)
                    yield ours
                    cur.execute(_COMMIT)
            except BaseException:
                conn.close()
                raise
            if ours.unprepared:
                conn.close()

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            yield _PgCursor(cur)

    def reachable(self) -> bool:
        # A connection of its own, kept between checks (not one from the pool: a full pool
        # must not read as a lost database), and replaced when it breaks. A standby answers
        # too, but cannot take Tally's writes: only a primary counts.
        try:
            if self._probe is None or self._probe.closed:
                # Its statement timeout after the session's settings (a keyword replaces
                # the conninfo's `options`, which hold JIT off and the URL's own).
                settings = self.config.connection_options()["options"]
                timeout = f"-c statement_timeout={PROBE_TIMEOUT_SECONDS * 1000}"
                self._probe = psycopg.connect(
                    self.config.conninfo(),
                    autocommit=True,
                    connect_timeout=PROBE_TIMEOUT_SECONDS,
                    options=f"{settings} {timeout}",
                )
            row = self._probe.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and not row[0]
        except psycopg.Error:
            self._close_probe()
            return False

    def _close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    def close(self) -> None:
        self._close_probe()
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

    def reachable(self) -> bool:
        # A file on this machine: it is there unless its disk is gone.
        try:
            with self.read() as cur:
                cur.execute("SELECT 1")
            return True
        except sqlite3.Error:
            return False

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
