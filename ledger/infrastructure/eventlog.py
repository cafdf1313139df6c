"""Questions about the event log that the library's recorders do not answer."""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.infrastructure.database import Database
from ledger.infrastructure.dialect import read_id

__all__ = [
    "event_at",
    "events_table",
    "existing_ids",
    "existing_originators",
    "latest_versions",
    "read_id",
    "stored_events_of",
    "stored_id",
]


def events_table(db: Database) -> tuple[str, str]:
    """(table, position column) of the library's event store on this backend."""
    return db.dialect.events_table, db.dialect.position_column


def stored_id(db: Database, originator_id: UUID) -> object:
    """An aggregate id as this backend stores it: hex text on SQLite, uuid on PostgreSQL."""
    return db.dialect.stored_id(originator_id)


def existing_ids(db: Database, table: str, column: str, ids: list[UUID]) -> set[UUID]:
    """Which of these ids appear in `column` of `table` (one indexed query)."""
    if not ids:
        return set()
    dialect = db.dialect
    marks = dialect.placeholders(len(ids))
    sql = f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN ({marks})"
    with db.read() as cur:
        cur.execute(sql, [dialect.stored_id(i) for i in ids])
        rows = cur.fetchall()
    return {dialect.read_id(r[0]) for r in rows}


def event_at(db: Database, position: int) -> tuple[UUID, int] | None:
    """The (aggregate id, version) of the event stored at this position, if any."""
    dialect = db.dialect
    sql = (
        f"SELECT originator_id, originator_version FROM {dialect.events_table}"
        f" WHERE {dialect.position_column} = ?"
    )
    with db.read() as cur:
        cur.execute(sql, (position,))
        row = cur.fetchone()
    return (dialect.read_id(row[0]), int(row[1])) if row else None


def latest_versions(db: Database, originator_ids: list[UUID]) -> dict[UUID, int]:
    """The newest stored version of each of these aggregates (absent: none stored)."""
    if not originator_ids:
        return {}
    dialect = db.dialect
    marks = dialect.placeholders(len(originator_ids))
    sql = (
        f"SELECT originator_id, MAX(originator_version) FROM {dialect.events_table}"
        f" WHERE originator_id IN ({marks}) GROUP BY originator_id"
    )
    with db.read() as cur:
        cur.execute(sql, [dialect.stored_id(i) for i in originator_ids])
        rows = cur.fetchall()
    return {dialect.read_id(r[0]): int(r[1]) for r in rows}


def existing_originators(db: Database, originator_ids: list[UUID]) -> set[UUID]:
    """Which of these aggregates have events at all."""
    return existing_ids(db, db.dialect.events_table, "originator_id", originator_ids)


def stored_events_of(db: Database, originator_ids: list[UUID]) -> dict[UUID, list[StoredEvent]]:
    """For each of these aggregates: its newest snapshot (if any) followed by its events
    after that snapshot, in version order. Two queries for all of them."""
    if not originator_ids:
        return {}
    dialect = db.dialect
    table, snapshots = dialect.events_table, dialect.snapshots_table
    marks = dialect.placeholders(len(originator_ids))
    keys = [dialect.stored_id(i) for i in originator_ids]
    found: dict[UUID, list[StoredEvent]] = {}
    with db.read() as cur:
        cur.execute(
            f"SELECT s.originator_id, s.originator_version, s.topic, s.state FROM {snapshots} s"
            f" JOIN (SELECT originator_id, MAX(originator_version) AS v FROM {snapshots}"
            f" WHERE originator_id IN ({marks}) GROUP BY originator_id) m"
            " ON s.originator_id = m.originator_id AND s.originator_version = m.v",
            keys,
        )
        rows = cur.fetchall()
        cur.execute(
            f"SELECT originator_id, originator_version, topic, state FROM {table} e"
            f" WHERE originator_id IN ({marks}) AND originator_version > COALESCE("
            f"(SELECT MAX(originator_version) FROM {snapshots} s"
            " WHERE s.originator_id = e.originator_id), 0)"
            " ORDER BY originator_id, originator_version",
            keys,
        )
        rows += cur.fetchall()
    for oid, version, topic, state in rows:
        key = dialect.read_id(oid)
        found.setdefault(key, []).append(StoredEvent(key, int(version), str(topic), bytes(state)))
    return found
