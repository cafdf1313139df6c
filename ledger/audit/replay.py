"""`ledger audit replay`: rebuild the read models from the log, somewhere else, and compare.

The live read models and the position they reflect are read in one snapshot (a repeatable-
read transaction on PostgreSQL, a read transaction on SQLite in WAL mode); the projection
then replays the log up to exactly that position into a scratch SQLite file, and the two are
compared row by row. Nothing is written to the live database: it is opened without
migrations and only read.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ledger.application.service import LedgerApplication
from ledger.infrastructure.database import DatabaseConfig, open_database, parse_database_url
from ledger.infrastructure.migrations import migrate
from projections.points import NAME, PointsProjection

# Read model -> its key columns (a row's identity for the comparison).
TABLES: dict[str, tuple[str, ...]] = {
    "rm_programs": ("program_id",),
    "rm_accounts": ("program_id", "member_id"),
    "rm_transactions": ("program_id", "member_id", "position"),
    "rm_lots": ("program_id", "member_id", "lot_id"),
    "rm_holds": ("program_id", "member_id", "hold_id"),
}


@dataclass
class Difference:
    table: str
    key: tuple[Any, ...]
    live: tuple[Any, ...] | None  # None: missing from the live read model
    replayed: tuple[Any, ...] | None  # None: the live one has a row the log does not give


@dataclass
class ReplayReport:
    position: int = 0
    rows_compared: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


Snapshot = dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


def _keyed(
    table: str, columns: list[str], rows: list[Any]
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    index = [columns.index(k) for k in TABLES[table]]
    return {tuple(row[i] for i in index): tuple(row) for row in rows}


@contextmanager
def _snapshot_cursor(config: DatabaseConfig) -> Iterator[Any]:
    if config.kind == "sqlite":
        conn = sqlite3.connect(f"file:{config.sqlite_path}?mode=ro", uri=True)
        try:
            conn.execute("BEGIN")
            yield conn.cursor()
        finally:
            conn.close()
        return
    with psycopg.connect(config.conninfo()) as pg:
        pg.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        pg.read_only = True
        with pg.cursor() as cur:
            yield cur


def read_live(config: DatabaseConfig) -> tuple[int, Snapshot]:
    """The live read models and the position they reflect, as of one instant."""
    snapshot: Snapshot = {}
    with _snapshot_cursor(config) as cur:
        cur.execute(f"SELECT position FROM projection_tracking WHERE name = '{NAME}'")
        row = cur.fetchone()
        position = int(row[0]) if row else 0
        for table in TABLES:
            cur.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            snapshot[table] = _keyed(table, columns, cur.fetchall())
    return position, snapshot


def rebuild(config: DatabaseConfig, position: int, scratch: Path) -> Snapshot:
    """Replay the log up to `position` into a fresh SQLite file; return its read models."""
    scratch_config = parse_database_url(f"sqlite:///{scratch}")
    migrate(scratch_config)
    live = open_database(config)
    app = LedgerApplication(config.eventsourcing_env(), live)
    target = open_database(scratch_config)
    projection = PointsProjection()
    try:
        done = 0
        while done < position:
            batch = app.recorder.select_notifications(start=done + 1, limit=500, stop=position)
            if not batch:
                break
            events = [(n.id, app.mapper.to_domain_event(n)) for n in batch]
            with target.transaction() as cur:
                projection.process(cur, events)
            done = batch[-1].id
        snapshot: Snapshot = {}
        with target.read() as cur:
            for table in TABLES:
                cur.execute(f"SELECT * FROM {table}")
                rows = cur.fetchall()
                columns = [d[0] for d in cur.description]  # type: ignore[attr-defined]
                snapshot[table] = _keyed(table, columns, rows)
        return snapshot
    finally:
        target.close()
        app.close()
        live.close()


def compare(live: Snapshot, replayed: Snapshot) -> ReplayReport:
    report = ReplayReport()
    for table in TABLES:
        mine, theirs = live[table], replayed[table]
        for key in sorted(mine.keys() | theirs.keys(), key=lambda k: [str(v) for v in k]):
            report.rows_compared += 1
            a, b = mine.get(key), theirs.get(key)
            if a != b:
                report.differences.append(Difference(table, key, a, b))
    return report


def replay(url: str) -> ReplayReport:
    config = parse_database_url(url)
    position, live = read_live(config)
    with tempfile.TemporaryDirectory(prefix="tally-replay-") as folder:
        replayed = rebuild(config, position, Path(folder) / "replay.db")
    report = compare(live, replayed)
    report.position = position
    return report
