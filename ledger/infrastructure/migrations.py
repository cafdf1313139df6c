"""Apply the numbered SQL files in migrations/<backend>/ in order, exactly once each.

Two servers starting together against one PostgreSQL must not race: the whole run holds a
transaction-level advisory lock (SQLite: BEGIN IMMEDIATE, which serialises writers). An
applied file whose checksum changed is refused: migrations are append-only, like the log.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ledger.infrastructure.database import DatabaseConfig

MIGRATIONS_DIR = Path(
    os.environ.get("TALLY_MIGRATIONS_DIR", Path(__file__).resolve().parents[2] / "migrations")
)
ADVISORY_LOCK_KEY = 7_345_001  # arbitrary, constant: "tally migrations"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations(kind: str) -> list[Migration]:
    folder = MIGRATIONS_DIR / kind
    if not folder.is_dir():
        raise MigrationError(f"no migrations folder at {folder}")
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        migrations.append(Migration(int(number), name, path.read_text()))
    return migrations


def pending_migrations(config: DatabaseConfig) -> list[Migration]:
    applied = _applied(config)
    return [m for m in available_migrations(config.kind) if m.version not in applied]


def migrate(config: DatabaseConfig) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    if config.kind == "sqlite":
        return _migrate_sqlite(config)
    return _migrate_postgres(config)


_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)"
)


def _check(applied: dict[int, str], migrations: list[Migration]) -> list[Migration]:
    for m in migrations:
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} was changed after it was applied; "
                "add a new migration instead"
            )
    return [m for m in migrations if m.version not in applied]


def _migrate_postgres(config: DatabaseConfig) -> list[Migration]:
    migrations = available_migrations("postgres")
    with psycopg.connect(config.conninfo(), autocommit=False) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute(_CREATE_TABLE)
        rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        todo = _check(dict(rows), migrations)
        for m in todo:
            conn.execute(m.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s,%s,%s)",
                (m.version, m.name, m.checksum),
            )
    return todo


def _migrate_sqlite(config: DatabaseConfig) -> list[Migration]:
    # Switching a new file to WAL needs a moment alone with it, and SQLite answers a second
    # process doing the same with "database is locked" at once (no busy wait): try again.
    for _ in range(100):
        try:
            return _migrate_sqlite_once(config)
        except sqlite3.OperationalError as e:
            if "locked" not in str(e):
                raise
            time.sleep(0.05)
    return _migrate_sqlite_once(config)


def _migrate_sqlite_once(config: DatabaseConfig) -> list[Migration]:
    migrations = available_migrations("sqlite")
    conn = sqlite3.connect(config.sqlite_path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE_TABLE)
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            todo = _check(dict(rows), migrations)
            for m in todo:
                # executescript() would commit; run statement by statement inside our BEGIN.
                for statement in _statements(m.sql):
                    conn.execute(statement)
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


def _statements(sql: str) -> list[str]:
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


def _applied(config: DatabaseConfig) -> dict[int, str]:
    if config.kind == "sqlite":
        if not Path(config.sqlite_path).exists():
            return {}
        lite = sqlite3.connect(config.sqlite_path, timeout=30)
        try:
            lite.execute(_CREATE_TABLE)
            return dict(lite.execute("SELECT version, checksum FROM schema_migrations").fetchall())
        finally:
            lite.close()
    with psycopg.connect(config.conninfo(), autocommit=True) as conn:
        conn.execute(_CREATE_TABLE)
        return dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
