"""Apply the numbered SQL files in ledger/migrations/<backend>/ in order, exactly once each.

Two servers starting together against one PostgreSQL must not race: the whole run holds a
transaction-level advisory lock (SQLite: BEGIN IMMEDIATE, which serialises writers). An
applied file whose checksum changed is refused: migrations are append-only, like the log.
How each backend locks and runs a file is its dialect's (`Dialect.migrate`, dialect.py).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ledger.infrastructure.database import DatabaseConfig
from ledger.infrastructure.dialect import MigrationFailed

# Inside the package, so a wheel carries them (package data in pyproject.toml).
MIGRATIONS_DIR = Path(
    os.environ.get("TALLY_MIGRATIONS_DIR", Path(__file__).resolve().parents[1] / "migrations")
)


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
    applied = config.dialect.applied_migrations(config)
    return [m for m in available_migrations(config.dialect.name) if m.version not in applied]


def migrate(config: DatabaseConfig) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    migrations = available_migrations(config.dialect.name)
    try:
        return config.dialect.migrate(config, lambda applied: _check(applied, migrations))
    except MigrationFailed as e:
        raise MigrationError(str(e)) from e


def _check(applied: dict[int, str], migrations: list[Migration]) -> list[Migration]:
    for m in migrations:
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} was changed after it was applied; "
                "add a new migration instead"
            )
    return [m for m in migrations if m.version not in applied]
