"""`ledger audit replay`: rebuild the read models from the log, somewhere else, and compare.

For every registered projection (projections/__init__.py), its live tables and the position
they reflect are read in one snapshot (a repeatable-read transaction on PostgreSQL, a read
transaction on SQLite in WAL mode); the projection then replays the log up to exactly that
position into a scratch SQLite file, and the two are compared row by row. Nothing is written
to the live database: it is opened without migrations and only read.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.application.service import LedgerApplication
from ledger.infrastructure.database import DatabaseConfig, open_database, parse_database_url
from ledger.infrastructure.migrations import migrate
from projections import REGISTERED
from projections.runner import Projection

# Read model -> its key columns (a row's identity for the comparison), of every projection.
TABLES: dict[str, tuple[str, ...]] = {
    table: key for projection in REGISTERED for table, key in projection.tables.items()
}


@dataclass
class Difference:
    table: str
    key: tuple[Any, ...]
    live: tuple[Any, ...] | None  # None: missing from the live read model
    replayed: tuple[Any, ...] | None  # None: the live one has a row the log does not give


@dataclass
class ReplayReport:
    position: int = 0  # the lowest of the projections' positions
    positions: dict[str, int] = field(default_factory=dict)  # by projection
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


def read_live(config: DatabaseConfig) -> tuple[dict[str, int], Snapshot]:
    """Every projection's position and its live tables, as of one instant."""
    snapshot: Snapshot = {}
    positions: dict[str, int] = {}
    with config.dialect.snapshot_cursor(config) as cur:
        cur.execute("SELECT name, position FROM projection_tracking")
        tracked = {str(name): int(position) for name, position in cur.fetchall()}
        for projection in REGISTERED:
            positions[projection.name] = tracked.get(projection.name, 0)
        for table in TABLES:
            cur.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cur.description]
            snapshot[table] = _keyed(table, columns, cur.fetchall())
    return positions, snapshot


def rebuild(config: DatabaseConfig, positions: dict[str, int], scratch: Path) -> Snapshot:
    """Replay the log into a fresh SQLite file, each projection up to its own position;
    return the read models it made."""
    scratch_config = parse_database_url(f"sqlite:///{scratch}")
    migrate(scratch_config)
    live = open_database(config)
    app = LedgerApplication(config.eventsourcing_env(), live)
    target = open_database(scratch_config)
    try:
        for projection_type in REGISTERED:
            _replay_one(
                app, target, projection_type(target.dialect), positions[projection_type.name]
            )
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


def _replay_one(app: LedgerApplication, target: Any, projection: Projection, position: int) -> None:
    done = 0
    while done < position:
        batch = app.recorder.select_notifications(start=done + 1, limit=500, stop=position)
        if not batch:
            break
        events = [(n.id, app.mapper.to_domain_event(n)) for n in batch]
        with target.transaction() as cur:
            projection.process(cur, events)
        done = batch[-1].id


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
    positions, live = read_live(config)
    with tempfile.TemporaryDirectory(prefix="tally-replay-") as folder:
        replayed = rebuild(config, positions, Path(folder) / "replay.db")
    report = compare(live, replayed)
    report.positions = positions
    report.position = min(positions.values(), default=0)
    return report
